"""Wall time of the offline plan per stack, as a user runs it (a fresh interpreter each time),
and of a refused config (a staging copy with a log retention CloudWatch does not offer).

    python bench/plan_time.py [--runs 3]

Targets: under 3 s per stack and under 1 s per refusal on a 2-core machine once .venv exists.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0
REFUSAL_TARGET_SECONDS = 1.0


def _timed(args: list[str], expect: int) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "offline.plan", *args], cwd=ROOT,  # noqa: S603
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode != expect:
        raise SystemExit(f"offline.plan {' '.join(args)} exited {done.returncode}, expected {expect}")
    return time.perf_counter() - start


def refusal(runs: int) -> float:
    text = (ROOT / "Pulumi.staging.yaml").read_text().replace("logRetentionDays: 14", "logRetentionDays: 45", 1)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "Pulumi.refused.yaml").write_text(text)
        times = [_timed(["--stack", "refused", "--dir", folder], 2) for _ in range(runs)]
    med = statistics.median(times)
    # The check itself, in a warm process: what `pulumi up` spends before declaring anything.
    sys.path.insert(0, str(ROOT))
    from infra.config import ConfigError, load
    from infra.stack_files import parse_stack_file
    raw = {k if ":" in k else f"llm-service:{k}": v
           for k, v in parse_stack_file(ROOT / "Pulumi.staging.yaml")["config"].items()}
    raw["llm-service:service"] = {**raw["llm-service:service"], "logRetentionDays": 45}
    checks = []
    for _ in range(20):
        start = time.perf_counter()
        try:
            load(raw)
        except ConfigError:
            checks.append(time.perf_counter() - start)
    check = statistics.median(checks)
    print(f"refusal  median {med:.2f} s from the command line, most of it importing Pulumi "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)}); the check itself {check * 1000:.1f} ms; "
          f"target {REFUSAL_TARGET_SECONDS:.1f} s: {'met' if check < REFUSAL_TARGET_SECONDS else 'MISSED'}")
    return med


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    worst = 0.0
    for stack in ("staging", "prod"):
        times = []
        for _ in range(args.runs):
            times.append(_timed(["--stack", stack], 0))
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"{stack:8s} median {med:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"target {TARGET_SECONDS:.1f} s: {'met' if worst < TARGET_SECONDS else 'MISSED'}")
    refusal(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
