"""`make mutate`: mutation testing (mutmut) of the modules that carry the project's guarantees.

    python -m mutation.run [PACKAGE ...] [--jobs N] [--only GLOB ...] [--report]
    python -m mutation.run PACKAGE --shard K/N      # one of N parts of a package (CI's jobs)
    python -m mutation.run --combine RESULTS.json ...  # the packages' scores from their parts
    python -m mutation.run PACKAGE --sample 150     # an estimate from a random sample of its mutants

Each package (mutation/packages.py) runs in its own copy of the checkout under .mutation/<package>/,
so mutmut's per-mutant results stay cached between runs there and only changed functions are tested
again. Prints each package's score (mutants killed over non-equivalent mutants), writes every
survivor's diff to .mutation/survivors.txt and the results to .mutation/results/, and exits 1 if a
package scores below the target. A shard tests some of a package's modules and is judged with the
others by --combine, which fails when a part is missing.
Equivalent mutants (no test could tell them apart from the original) are listed, each with its
reason, in mutation/equivalent.txt.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mutation.packages import BY_NAME, PACKAGES, TARGET, Package

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
EQUIVALENT = ROOT / "mutation" / "equivalent.txt"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
UNCOUNTED = {"skipped"}
NOT_RUN = {"not checked"}  # a run stopped before it reached them: no verdict yet
SEED = 23  # the sample's: fixed, so that a second run tests the same mutants (their verdicts cached)


def checkout_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],  # noqa: S607
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def sync(work: Path, files: list[str]) -> None:
    """Copy the checkout into `work`, leaving unchanged files (and so mutmut's cache) alone."""
    for name in files:
        if name == "pyproject.toml":
            continue  # written with the package's mutmut section (run_mutmut)
        src, dst = ROOT / name, work / name
        if dst.exists() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Stamped now, not with the checkout's time: mutmut makes a file's mutants again only when
        # the file is newer than them, and a file edited before the last run's mutants were made
        # (but copied after) would keep its old mutants, untested against the new code.
        shutil.copyfile(src, dst)
    kept = set(files)
    for path in work.rglob("*"):
        rel = path.relative_to(work).as_posix()
        if path.is_file() and not rel.startswith(("mutants/", "hits")) and rel != "pyproject.toml" \
                and "__pycache__" not in rel and rel not in kept:
            path.unlink()


def mutmut_config(package: Package, files: list[str]) -> str:
    sources = sorted({glob.split("/")[0] for glob in package.mutate})
    tops = sorted({f.split("/")[0] + ("/" if "/" in f else "") for f in files})
    also_copy = [t for t in tops if t.rstrip("/") not in sources and t != "tests/"]
    return "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {json.dumps([s + '/' for s in sources])}",
        f"only_mutate = {json.dumps(list(package.mutate))}",
        f"also_copy = {json.dumps(also_copy)}",
        # mutmut's time limit is (the tests' run time + this) x 15, where the run time leaves out
        # fixtures: a session's syntheses and servers take seconds before the first test, and a
        # loaded machine would make a mutant that changes nothing "time out", counted as killed.
        "timeout_constant = 10.0",
        # One test process per mutant; the suite's own parallelism (xdist) would fork servers twice.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-q"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(list(package.tests))}",
        "",
    ])


def prepare(package: Package) -> Path:
    """The package's copy of the checkout, with its mutmut section, ready to run."""
    work = WORK / package.name
    work.mkdir(parents=True, exist_ok=True)
    files = checkout_files()
    sync(work, files)
    config = (ROOT / "pyproject.toml").read_text() + mutmut_config(package, files)
    if not (work / "pyproject.toml").exists() or (work / "pyproject.toml").read_text() != config:
        (work / "pyproject.toml").write_text(config)
    return work


def mutant_names(package: Package, work: Path) -> list[str]:
    """Every mutant mutmut makes of the package's files, by the names it gives them."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    names = []
    with inside(work):  # mutmut reads its configuration (what not to mutate) from there
        for module, _ in modules(package):
            path = Path(*module.split(".")).with_suffix(".py")
            names += [f"{module}.{n}" for n in mutate_file_contents(str(path), path.read_text()).mutant_names]
    return sorted(names)


def sample(names: list[str], n: int, seed: int = SEED) -> list[str]:
    """The first `n` mutants by a hash of the seed and each name: a code change moves the sample
    only where names come or go (a draw by position would reshuffle all of it, and the verdicts
    cached for the last sample would be of other mutants)."""
    return sorted(sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).digest())[:n])


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % interval of a package's score from a sample's (Wilson's, sound at 0 and 100 %)."""
    if not n:
        return 0.0, 1.0
    p = killed / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def run_mutmut(package: Package, jobs: int, only: list[str]) -> Path:
    work = prepare(package)
    hits = work / "hits"
    hits.unlink(missing_ok=True)
    # The gateway's tests start it as a process: MUTATION_HITS lets it report the functions it ran
    # during mutmut's stats run (mutation/hook), so its mutants are tested by the tests that reach them.
    env = {**os.environ, "MUTATION_HITS": str(hits)}
    cached = (work / "mutants").is_dir()
    # Which tests reach which function is found again on each run: mutmut would look again only
    # for new tests, and keep what changed tests and their fixtures reach from the last run.
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    # mutmut tests what it has no verdict for: every mutant on a first run, then those of changed
    # functions.
    mutmut(["run", "--max-children", str(jobs), *only], work, env)
    if cached:
        # It keeps a cached survivor's verdict even when a test written since would kill it:
        # named, a mutant is tested again.
        again = [n for n, (s, _) in read_status(work).items() if s not in KILLED | UNCOUNTED
                 and (not only or any(fnmatch.fnmatchcase(n, glob) for glob in only))]
        if again:
            mutmut(["run", "--max-children", str(jobs), *again], work, env)
    return work


def mutmut(args: list[str], work: Path, env: dict[str, str]) -> None:
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    done = subprocess.run(command, cwd=work, env=env, check=False)  # noqa: S603 - our own venv's mutmut
    if done.returncode != 0:
        # mutmut stops before testing any mutant when the unmutated tests fail (its output says
        # which): the results on disk are then the last run's, not this one's.
        raise SystemExit(f"mutmut exited {done.returncode} in {work}: no mutant was tested")


def read_status(work: Path) -> dict[str, tuple[str, str]]:
    """Each mutant's status (mutmut's words) and the file it mutates, from mutmut's records."""
    from mutmut.stats import status_by_exit_code

    status = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        source = meta.relative_to(work / "mutants").as_posix().removesuffix(".meta")
        # mutmut keeps the verdicts of a changed function's old mutants; only those its mutated
        # copy of the file still defines are this code's.
        defined = set(re.findall(r"^\s*(?:async\s+)?def (\S+__mutmut_\d+)\(", meta.with_suffix("").read_text(),
                                 re.M))
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if name.rsplit(".", 1)[-1] in defined:
                status[name] = status_by_exit_code[code], source
    return status


@contextmanager
def inside(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@dataclass
class Result:
    package: str
    sampled_from: int = 0  # the package's mutants, when these are a random sample of them
    status: dict[str, str] = field(default_factory=dict)  # mutant name -> mutmut's status
    diffs: dict[str, str] = field(default_factory=dict)  # surviving mutant -> its diff

    def count(self, wanted: set[str]) -> int:
        return sum(1 for s in self.status.values() if s in wanted)


def modules(package: Package) -> list[tuple[str, int]]:
    """The package's mutated files as mutmut names their mutants (`gateway/__init__.py` is
    `gateway.__init__`), each with its size in bytes."""
    files = sorted({f for pattern in package.mutate for f in fnmatch.filter(checkout_files(), pattern)})
    return [(f.removesuffix(".py").replace("/", "."), (ROOT / f).stat().st_size) for f in files]


def shard_globs(package: Package, k: int, n: int) -> list[str]:
    """The mutant globs of part k of n: the modules dealt out largest first, each to the part with
    the fewest bytes so far (a module's mutants are about in proportion to its size)."""
    parts: list[list[str]] = [[] for _ in range(n)]
    sizes = [0] * n
    for module, size in sorted(modules(package), key=lambda m: (-m[1], m[0])):
        lightest = sizes.index(min(sizes))
        parts[lightest].append(f"{module}.x*")  # mutmut names a function's mutants x_f, xǁClassǁf
        sizes[lightest] += size
    return sorted(parts[k - 1])


def parse_shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: K/N with 1 <= K <= N, e.g. 2/4")
    return int(k), int(n)


def save_results(result: Result, shard: tuple[int, int]) -> Path:
    """Write a package's (or a part's) results where --combine and CI's artifact find them."""
    path = WORK / "results" / f"{result.package}-{shard[0]}of{shard[1]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"package": result.package, "shard": list(shard),
                                "status": result.status, "diffs": result.diffs}, indent=1, sort_keys=True))
    return path


def combine(paths: list[Path]) -> list[Result]:
    """Each package's results from its parts' files; a package or a part with no file is an error."""
    parts: dict[str, dict[int, dict]] = {}
    counts: dict[str, set[int]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        k, n = data["shard"]
        parts.setdefault(data["package"], {})[k] = data
        counts.setdefault(data["package"], set()).add(n)
    missing = [p.name for p in PACKAGES if p.name not in parts]
    for name, got in parts.items():
        (n, *other) = sorted(counts[name])
        if other:
            raise SystemExit(f"{name}: parts of different splits ({', '.join(map(str, [n, *other]))})")
        missing += [f"{name} {k}/{n}" for k in range(1, n + 1) if k not in got]
    if missing:
        raise SystemExit(f"no results for {', '.join(missing)}: its job failed or ran out of time")
    results = []
    for package in PACKAGES:
        result = Result(package.name)
        for data in parts[package.name].values():
            result.status.update(data["status"])
            result.diffs.update(data["diffs"])
        results.append(result)
    return results


def read_results(package: Package, work: Path, only: list[str]) -> Result:
    """The package's results (those matching `only`, when given), with each survivor's diff."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    result = Result(package.name)
    for name, (status, source) in read_status(work).items():
        if only and not any(fnmatch.fnmatchcase(name, glob) for glob in only):
            continue
        result.status[name] = status
        if status not in KILLED | UNCOUNTED:
            with inside(work):
                result.diffs[name] = get_diff_for_mutant(name, path=source)
    return result


def read_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    """`mutant name: why no test can tell it from the original`, one per line."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(":")
            if not reason.strip():
                raise SystemExit(f"{path.name}: {name.strip()} has no reason")
            entries[name.strip()] = reason.strip()
    return entries


def score(result: Result, equivalent: dict[str, str]) -> tuple[int, int, list[str]]:
    """(killed, non-equivalent mutants, survivors not listed as equivalent)."""
    survivors = [n for n, s in result.status.items()
                 if s not in KILLED | UNCOUNTED | NOT_RUN and n not in equivalent]
    counted = sum(1 for n, s in result.status.items() if s not in UNCOUNTED | NOT_RUN and n not in equivalent)
    return counted - len(survivors), counted, survivors


def report(results: list[Result], equivalent: dict[str, str]) -> bool:
    ok = True
    # A mutant that makes a test run past mutmut's time limit counts as killed (it would hang CI);
    # shown apart, as on a loaded machine a slow test can be counted so.
    print(f"\n{'package':<12}{'mutants':>9}{'killed':>8}{'(timeout)':>10}{'survived':>10}{'no tests':>10}"
          f"{'not run':>9}{'equivalent':>12}{'score':>8}")
    survivors_text = []
    for r in results:
        killed, counted, survivors = score(r, equivalent)
        ratio = killed / counted if counted else 1.0
        # A run that stopped part way scores the mutants it reached, and does not pass.
        ok &= ratio >= TARGET and not r.count(NOT_RUN)
        print(f"{r.package:<12}{len(r.status):>9}{killed:>8}{r.count({'timeout'}):>10}"
              f"{r.count({'survived', 'suspicious'}):>10}{r.count({'no tests'}):>10}{r.count(NOT_RUN):>9}"
              f"{sum(n in equivalent for n in r.status):>12}{ratio:>8.1%}")
        survivors_text += [f"# {n} ({r.status[n]})\n{r.diffs[n]}\n" for n in survivors]
    for r in results:
        if r.sampled_from:
            killed, counted, _ = score(r, equivalent)
            low, high = wilson(killed, counted)
            print(f"{r.package}: a random sample of {len(r.status):,} of its {r.sampled_from:,} mutants "
                  f"(seed {SEED}); the package's score is {low:.1%} to {high:.1%} (95 % interval)")
    modules = {n.rsplit(".", 1)[0] for r in results for n in r.status}
    surviving = {n for r in results for n in r.diffs}
    # A sample tests some of a module's mutants: an equivalent it did not draw is not stale.
    drawn = {n for r in results if r.sampled_from for n in r.status}
    sampled = {n.rsplit(".", 1)[0] for n in drawn}
    stale = sorted(n for n in equivalent if n.rsplit(".", 1)[0] in modules and n not in surviving
                   and (n in drawn or n.rsplit(".", 1)[0] not in sampled))
    for name in stale:
        print(f"warning: {EQUIVALENT.name} lists {name}, which is no longer a surviving mutant")
    WORK.mkdir(exist_ok=True)
    (WORK / "survivors.txt").write_text("\n".join(survivors_text))
    print(f"\ntarget {TARGET:.0%} per package; survivors' diffs in {os.path.relpath(WORK / 'survivors.txt')}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mutation.run", description=__doc__.split("\n")[0])
    parser.add_argument("packages", nargs="*", metavar="PACKAGE", help=f"of {', '.join(BY_NAME)} (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="test only the mutants whose names match, e.g. 'gateway.limits.*' (repeatable)")
    parser.add_argument("--report", action="store_true", help="only report the last run's results")
    parser.add_argument("--shard", type=parse_shard, metavar="K/N",
                        help="test part K of N of one package (its modules split by size); judged by --combine")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="test N of each package's mutants, drawn at random: an estimate of its score")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="RESULTS",
                        help="score every package from its parts' results files (.mutation/results/*.json)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.packages if n not in BY_NAME]
    if unknown:
        parser.error(f"no package {', '.join(unknown)}: one of {', '.join(BY_NAME)}")
    if args.combine:
        return 0 if report(combine(args.combine), read_equivalent()) else 1
    if args.shard and (len(args.packages) != 1 or args.only):
        parser.error("--shard takes one package and no --only")
    if args.sample is not None and (args.sample < 1 or args.only or args.shard):
        parser.error("--sample takes a number of mutants of at least 1, and no --only or --shard")
    packages = [BY_NAME[n] for n in args.packages] or list(PACKAGES)
    results = []
    for package in packages:
        only = shard_globs(package, *args.shard) if args.shard else args.only
        everything = mutant_names(package, prepare(package)) if args.sample else []
        only = sample(everything, args.sample) if args.sample else only
        work = WORK / package.name if args.report else run_mutmut(package, args.jobs, only)
        results.append(read_results(package, work, only))
        results[-1].sampled_from = len(everything)
        if args.sample and len(results[-1].status) != len(only):
            raise SystemExit(f"{package.name}: mutmut has verdicts for {len(results[-1].status)} of the "
                             f"{len(only)} mutants sampled: names it does not make?")
        save_results(results[-1], args.shard or (1, 1))
    ok = report(results, read_equivalent())
    if args.shard:
        print(f"part {args.shard[0]}/{args.shard[1]} of {packages[0].name}: its score counts with the other "
              "parts' (--combine)")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
