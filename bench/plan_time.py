"""Wall time of the offline plan per stack, as a user runs it (a fresh interpreter each time).

    python bench/plan_time.py [--runs 3]

Target: under 3 s per stack on a 2-core machine once .venv exists. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    worst = 0.0
    for stack in ("staging", "prod"):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "infra.plan", "--stack", stack], cwd=ROOT,  # noqa: S603
                           check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"{stack:8s} median {med:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"target {TARGET_SECONDS:.1f} s: {'met' if worst < TARGET_SECONDS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
