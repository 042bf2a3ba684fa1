"""`make mutate`'s own logic: what counts as killed, the equivalents file, the target, the config
each package runs with, and the bridge that lets a gateway process report what it ran."""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import re
import subprocess
import sys
import time

import pytest

from infra.stack_files import ROOT
from mutation import packages, run
from tests import gateway_process


def _result(**status: str) -> run.Result:
    return run.Result("gateway", status={f"gateway.limits.x_f__mutmut_{k}": v for k, v in status.items()})


def test_killed_timed_out_and_segfaulted_mutants_count_as_killed_and_equivalents_leave_the_count():
    r = _result(**{"1": "killed", "2": "timeout", "3": "segfault", "4": "survived", "5": "no tests",
                   "6": "suspicious", "7": "skipped", "8": "survived"})
    killed, counted, survivors = run.score(r, {"gateway.limits.x_f__mutmut_8": "why"})
    assert (killed, counted) == (3, 6)
    assert survivors == [f"gateway.limits.x_f__mutmut_{n}" for n in (4, 5, 6)]


def test_a_package_under_the_target_fails_the_run_and_one_at_it_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "WORK", tmp_path)
    at = _result(**{str(n): "killed" for n in range(9)}, **{"9": "survived"})
    at.diffs = {"gateway.limits.x_f__mutmut_9": "- a\n+ b"}
    assert run.report([at], {}) is True, "9 of 10 is the target"
    under = _result(**{str(n): "killed" for n in range(8)}, **{"8": "survived", "9": "survived"})
    under.diffs = {f"gateway.limits.x_f__mutmut_{n}": "- a\n+ b" for n in (8, 9)}
    assert run.report([under], {}) is False
    assert (tmp_path / "survivors.txt").read_text().count("# gateway.limits.x_f__mutmut_") == 2
    assert "80.0%" in capsys.readouterr().out


def test_an_equivalent_entry_that_no_longer_survives_is_pointed_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "WORK", tmp_path)
    run.report([_result(**{"1": "killed"})], {"gateway.limits.x_f__mutmut_1": "why"})
    assert "lists gateway.limits.x_f__mutmut_1, which is no longer a surviving mutant" in capsys.readouterr().out


def test_an_equivalent_needs_its_reason(tmp_path):
    (tmp_path / "eq.txt").write_text("# comment\ngateway.limits.x_f__mutmut_1: the same sum either way\n")
    assert run.read_equivalent(tmp_path / "eq.txt") == {"gateway.limits.x_f__mutmut_1": "the same sum either way"}
    (tmp_path / "eq.txt").write_text("gateway.limits.x_f__mutmut_2:\n")
    with pytest.raises(SystemExit, match="gateway.limits.x_f__mutmut_2 has no reason"):
        run.read_equivalent(tmp_path / "eq.txt")
    assert all(reason for reason in run.read_equivalent().values())


@pytest.mark.parametrize("package", packages.PACKAGES, ids=lambda p: p.name)
def test_each_package_names_files_and_tests_that_exist(package):
    for pattern in package.mutate:
        assert glob.glob(str(ROOT / pattern)), pattern
    for test in package.tests:
        assert (ROOT / test).is_file(), test
    config = run.mutmut_config(package, run.checkout_files())
    assert f'only_mutate = {list(package.mutate)}'.replace("'", '"') in config
    assert '"tests/"' not in config.split("also_copy")[1].split("\n")[0], "mutmut copies tests itself"
    assert '"no:xdist"' in config
    assert "timeout_constant = 10.0" in config, "a limit that fixtures fit in"


def test_a_gateway_process_is_told_the_mutant_and_during_stats_where_to_report(monkeypatch):
    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    assert gateway_process.under_mutation() == {}, "an ordinary test run changes nothing"
    monkeypatch.setenv("MUTATION_HITS", "/tmp/hits")
    monkeypatch.setenv("MUTANT_UNDER_TEST", "gateway.limits.x_windows__mutmut_3")
    assert gateway_process.under_mutation() == {"MUTANT_UNDER_TEST": "gateway.limits.x_windows__mutmut_3"}
    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")
    env = gateway_process.under_mutation()
    assert env["MUTATION_HITS"] == "/tmp/hits"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT / "mutation" / "hook"), str(ROOT)]


def test_the_hook_writes_each_function_the_process_runs_to_the_hits_file(tmp_path):
    hits = tmp_path / "hits"
    code = ("import mutmut.mutation.trampoline as t; t.record_trampoline_hit('gateway.limits.x_windows'); "
            "t.record_trampoline_hit('gateway.keys.x_digest', caller='x')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "mutation" / "hook"), "MUTATION_HITS": str(hits)})
    assert done.returncode == 0, done.stderr
    assert hits.read_text().splitlines() == ["gateway.limits.x_windows", "gateway.keys.x_digest"]


def test_a_second_session_in_one_process_synthesizes_again():
    """mutmut runs each mutant's session in a process forked from one that ran the unmutated tests:
    a synthesis left over from that session would hide a mutant in the config or the program."""
    seeded = ("import sys, pytest, tests.conftest as c; c._SYNTHESES[('seed',)] = None; "
              "sys.exit(pytest.main(['-q', '-p', 'no:xdist', '-p', 'no:cacheprovider', "
              f"'{__file__}::test_this_session_holds_only_its_own_syntheses']))")
    done = subprocess.run([sys.executable, "-c", seeded], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_this_session_holds_only_its_own_syntheses():
    from tests import conftest

    assert ("seed",) not in conftest._SYNTHESES  # noqa: SLF001 - the cache under test


def test_a_session_forked_from_one_that_synthesized_synthesizes_too():
    """As mutmut runs a mutant: a session in a process forked from one that ran a synthesis (whose
    event loop's executor threads the child does not have) finishes its own."""
    forked = ("import os, signal, sys, pytest\n"
              "args = ['-q', '-p', 'no:xdist', '-p', 'no:cacheprovider', "
              f"'{__file__}::test_a_stack_synthesizes_in_this_session']\n"
              "assert pytest.main(args) == 0\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    signal.alarm(120)  # a child waiting forever is killed: the test fails, not hangs\n"
              "    os._exit(pytest.main(args))\n"
              "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    done = subprocess.run([sys.executable, "-c", forked], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_a_stack_synthesizes_in_this_session():
    import offline.synth

    assert len(offline.synth.synthesize("staging").resources) > 50


@pytest.mark.parametrize("package", packages.PACKAGES, ids=lambda p: p.name)
def test_the_parts_of_a_package_hold_each_module_once_and_about_the_same_bytes(package):
    modules = dict(run.modules(package))
    for n in (1, 2, 4):
        parts = [run.shard_globs(package, k, n) for k in range(1, n + 1)]
        dealt = sorted(glob.removesuffix(".x*") for part in parts for glob in part)
        assert dealt == sorted(modules), "every module in one part"
        sizes = [sum(modules[g.removesuffix(".x*")] for g in part) for part in parts]
        assert max(sizes) - min(sizes) <= max(modules.values()), "no part heavier by more than a module"
    names = {"gateway": "gateway.store.xǁValkeyStoreǁgate__mutmut_3", "ops": "ops.apikey.x_put__mutmut_1"}
    if package.name in names:  # a mutant's name, as mutmut writes it, falls in exactly one part
        hits = [k for k in range(1, 5) if any(fnmatch.fnmatchcase(names[package.name], g)
                                              for g in run.shard_globs(package, k, 4))]
        assert len(hits) == 1


def test_a_part_is_named_k_of_n():
    assert run.parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "-1/4"):
        with pytest.raises(argparse.ArgumentTypeError, match="K/N with 1 <= K <= N"):
            run.parse_shard(bad)
    with pytest.raises(SystemExit):
        run.main(["gateway", "ops", "--shard", "1/2"])
    with pytest.raises(SystemExit):
        run.main(["gateway", "--shard", "1/2", "--only", "gateway.keys.*"])


def _parts(tmp_path, monkeypatch, **status_by_part):
    """Each package's results saved as its parts would save them; gateway's split as given."""
    monkeypatch.setattr(run, "WORK", tmp_path)
    paths = []
    for name in packages.BY_NAME:
        if name != "gateway":
            paths.append(run.save_results(run.Result(name, status={f"{name}.m.x_f__mutmut_1": "killed"}), (1, 1)))
    for part, status in status_by_part.items():
        k, n = map(int, part.removeprefix("p").split("of"))
        diffs = {m: "- a\n+ b" for m, s in status.items() if s == "survived"}
        paths.append(run.save_results(run.Result("gateway", status=status, diffs=diffs), (k, n)))
    return paths


def test_the_parts_combine_into_one_score_per_package(tmp_path, monkeypatch, capsys):
    # Part 1 kills 3 of 5, part 2 all its 5: 8 of 10 in all.
    survivors = ["gateway.keys.x_f__mutmut_9", "gateway.keys.x_g__mutmut_1"]
    one = {f"gateway.keys.x_f__mutmut_{n}": "killed" for n in range(3)} | dict.fromkeys(survivors, "survived")
    two = {f"gateway.store.x_f__mutmut_{n}": "killed" for n in range(5)}
    results = run.combine(_parts(tmp_path, monkeypatch, p1of2=one, p2of2=two))
    (gateway,) = [r for r in results if r.package == "gateway"]
    assert gateway.status == one | two and sorted(gateway.diffs) == survivors
    assert run.score(gateway, {}) == (8, 10, survivors)
    assert [r.package for r in results] == list(packages.BY_NAME)
    paths = _parts(tmp_path, monkeypatch, p1of2=one, p2of2=two)
    assert run.main(["--combine", *map(str, paths)]) == 1, "8 of 10 is under the target"
    assert "80.0%" in capsys.readouterr().out
    two |= {f"gateway.store.x_h__mutmut_{n}": "killed" for n in range(10)}  # 18 of 20 in all
    paths = _parts(tmp_path, monkeypatch, p1of2=one, p2of2=two)
    assert run.main(["--combine", *map(str, paths)]) == 0, "part 1 alone is under it, the package is not"


def test_a_missing_part_or_package_fails_the_combined_score(tmp_path, monkeypatch):
    killed = {"gateway.keys.x_f__mutmut_1": "killed"}
    paths = _parts(tmp_path, monkeypatch, p1of3=killed, p3of3=killed)
    with pytest.raises(SystemExit, match=r"no results for gateway 2/3: its job failed"):
        run.combine(paths)
    paths = _parts(tmp_path, monkeypatch, p1of1=killed)
    with pytest.raises(SystemExit, match=r"no results for ops"):
        run.combine([p for p in paths if "ops-" not in p.name])
    paths = _parts(tmp_path, monkeypatch, p1of2=killed, p2of2=killed) + _parts(tmp_path, monkeypatch, p1of3=killed)
    with pytest.raises(SystemExit, match=r"gateway: parts of different splits \(2, 3\)"):
        run.combine(paths)


def test_a_server_a_test_process_started_dies_with_it(tmp_path):
    """Killed as mutmut kills a test process past its time limit: its Valkey does not outlive it."""
    start = ("import sys, time\n"
             "from pathlib import Path\n"
             "from tests import valkey_server\n"
             "server = valkey_server.start(Path(sys.argv[1]))\n"
             "print(server.proc.pid, flush=True)\n"
             "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", start, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, 9)
    raise AssertionError("the server outlived the test process that started it")


def test_the_verdicts_of_mutants_a_function_no_longer_has_are_not_counted(tmp_path):
    """mutmut keeps the verdicts of a changed function's old mutants in its records."""
    import json

    (tmp_path / "mutants" / "gateway").mkdir(parents=True)
    (tmp_path / "mutants" / "gateway" / "keys.py").write_text(
        "def x_f__mutmut_1(a):\n    return a\n\nclass K:\n    def xǁKǁg__mutmut_1(self):\n        pass\n"
        "    async def xǁKǁh__mutmut_1(self):\n        pass\n\nasync def x_i__mutmut_1():\n    pass\n")
    codes = {"gateway.keys.x_f__mutmut_1": 1, "gateway.keys.x_f__mutmut_2": 0, "gateway.keys.xǁKǁg__mutmut_1": 0,
             "gateway.keys.xǁKǁh__mutmut_1": 1, "gateway.keys.x_i__mutmut_1": 0}
    (tmp_path / "mutants" / "gateway" / "keys.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    assert run.read_status(tmp_path) == {"gateway.keys.x_f__mutmut_1": ("killed", "gateway/keys.py"),
                                         "gateway.keys.xǁKǁg__mutmut_1": ("survived", "gateway/keys.py"),
                                         # a coroutine's mutants are its own too
                                         "gateway.keys.xǁKǁh__mutmut_1": ("killed", "gateway/keys.py"),
                                         "gateway.keys.x_i__mutmut_1": ("survived", "gateway/keys.py")}


def test_work_shared_by_tests_is_credited_to_each_test_that_uses_it(monkeypatch):
    """Under the stats run: what a block ran is recorded (and still credited to the running test),
    and what a session fixture ran is credited to every later test that uses the fixture."""
    from types import SimpleNamespace

    from mutmut.state import state

    from tests import mutation_credit

    monkeypatch.setenv("MUTANT_UNDER_TEST", "stats")
    monkeypatch.setattr(mutation_credit, "_FIXTURE_HITS", {"stack": {"components.network.x_f"}})
    monkeypatch.setattr(mutation_credit, "_IMPORT_HITS", {"infra.config.sections.x_allow"})
    monkeypatch.delenv("MUTATION_HITS", raising=False)
    stats = state()._stats  # noqa: SLF001
    saved = set(stats)
    try:
        stats.clear()
        stats.add("before")
        into: set[str] = set()
        with mutation_credit.recording(into):
            stats.add("inside")
        assert into == {"inside"} and stats == {"before", "inside"}
        stats.clear()

        def item(*fixtures, fresh=False):
            return SimpleNamespace(fixturenames=list(fixtures),
                                   get_closest_marker=lambda name: fresh and name == "fresh_process")
        mutation_credit.pytest_runtest_teardown(item("stack", "tmp_path"))
        assert stats == {"components.network.x_f"}
        stats.clear()
        mutation_credit.pytest_runtest_teardown(item("tmp_path", fresh=True))
        assert stats == {"infra.config.sections.x_allow"}
        monkeypatch.setenv("MUTANT_UNDER_TEST", "")  # an ordinary run: nothing recorded or credited
        stats.clear()
        mutation_credit.pytest_runtest_teardown(item("stack", fresh=True))
        assert stats == set()
    finally:
        stats.clear()
        stats |= saved


def test_a_sample_is_drawn_from_the_mutants_mutmut_makes_and_is_the_same_every_run(tmp_path):
    """A sample names mutants as mutmut does (a name it does not make would test nothing), and the
    same ones on every run, so that a second run finds their verdicts cached."""
    config = (ROOT / "pyproject.toml").read_text() + run.mutmut_config(packages.BY_NAME["offline"], [])
    (tmp_path / "pyproject.toml").write_text(config)
    (tmp_path / "offline").mkdir()
    for name in ("cost.py", "diff.py"):
        (tmp_path / "offline" / name).write_text((ROOT / "offline" / name).read_text())
    names = run.mutant_names(packages.BY_NAME["offline"], tmp_path)
    assert len(names) > 1000 and len(set(names)) == len(names)
    defined = {m: set(re.findall(r"^(?:    )?def (\w+)\(", (ROOT / f"offline/{m}.py").read_text(), re.M))
               for m in ("cost", "diff")}
    for name in names:
        module, function = re.fullmatch(r"offline\.(cost|diff)\.x(?:_|ǁ\w+ǁ)(\w+)__mutmut_\d+", name).groups()
        assert function in defined[module], name
    drawn = run.sample(names, 150)
    assert len(drawn) == 150 and set(drawn) <= set(names) and drawn == run.sample(names, 150)
    assert drawn != run.sample(names, 150, seed=run.SEED + 1)
    assert run.sample(names[:5], 150) == names[:5], "a package smaller than the sample runs whole"
    # A function changed (its mutants named again) leaves the rest of the sample where it was.
    new = [f"offline.cost.x_main__mutmut_{i}" for i in range(900, 960)]
    again = run.sample([n for n in names if "x_main__" not in n] + new, 150)
    gone, came = sum("x_main__" in n for n in drawn), len(set(again) & set(new))
    assert len(set(again) & set(drawn)) >= 150 - gone - came, "only what came or went moved"


def test_a_samples_score_is_reported_with_its_interval(tmp_path, monkeypatch, capsys):
    assert [round(x, 3) for x in run.wilson(135, 150)] == [0.842, 0.938]
    assert run.wilson(150, 150)[1] == 1.0 and run.wilson(0, 150)[0] == 0.0
    assert run.wilson(0, 0) == (0.0, 1.0), "no mutant decided: nothing is known"
    monkeypatch.setattr(run, "WORK", tmp_path)
    sampled = _result(**{str(n): "killed" for n in range(135)}, **{str(n): "survived" for n in range(135, 150)})
    sampled.diffs = {n: "- a\n+ b" for n, s in sampled.status.items() if s == "survived"}
    sampled.sampled_from = 4112
    assert run.report([sampled], {}) is True
    assert ("gateway: a random sample of 150 of its 4,112 mutants (seed 23); the package's score is "
            "84.2% to 93.8% (95 % interval)") in capsys.readouterr().out


@pytest.mark.parametrize("argv,words", [
    (["gateway", "--sample", "0"], "--sample takes a number of mutants of at least 1"),
    (["gateway", "--sample", "10", "--only", "gateway.keys.*"], "and no --only or --shard"),
    (["gateway", "--sample", "10", "--shard", "1/2"], "and no --only or --shard"),
])
def test_a_sample_takes_a_positive_size_and_nothing_else_that_picks_mutants(argv, words, capsys):
    with pytest.raises(SystemExit):
        run.main(argv)
    assert words in capsys.readouterr().err


def test_an_equivalent_a_sample_did_not_draw_is_not_called_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "WORK", tmp_path)
    sampled = _result(**{"1": "killed", "2": "killed"})
    sampled.sampled_from = 40
    run.report([sampled], {"gateway.limits.x_f__mutmut_7": "why", "gateway.limits.x_f__mutmut_2": "why"})
    out = capsys.readouterr().out
    assert "lists gateway.limits.x_f__mutmut_2, which is no longer" in out, "drawn, and killed: stale"
    assert "x_f__mutmut_7" not in out, "not drawn: nothing is known of it"


def test_a_run_that_stopped_part_way_scores_what_it_reached_and_does_not_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "WORK", tmp_path)
    stopped = _result(**{str(n): "killed" for n in range(9)}, **{"9": "survived"},
                      **{str(n): "not checked" for n in range(10, 40)})
    stopped.diffs = {"gateway.limits.x_f__mutmut_9": "- a\n+ b"}
    assert run.score(stopped, {})[:2] == (9, 10), "30 mutants without a verdict are not survivors"
    assert run.report([stopped], {}) is False, "nor is a package scored on a third of its mutants passed"
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("gateway"))
    assert row.split() == ["gateway", "40", "9", "0", "1", "0", "30", "0", "90.0%"]


def test_a_changed_file_is_copied_newer_than_the_mutants_made_before(tmp_path, monkeypatch):
    """mutmut makes a file's mutants again only when the file is newer than them: a file edited
    an hour before the last run's mutants were made, copied in now, must be newer than those."""
    checkout, work = tmp_path / "checkout", tmp_path / "work"
    (checkout / "gateway").mkdir(parents=True)
    (work / "gateway").mkdir(parents=True)
    (work / "mutants" / "gateway").mkdir(parents=True)
    (checkout / "gateway" / "app.py").write_text("x = 2\n")
    os.utime(checkout / "gateway" / "app.py", (time.time() - 3600, time.time() - 3600))
    (work / "gateway" / "app.py").write_text("x = 1\n")
    mutants = work / "mutants" / "gateway" / "app.py"
    mutants.write_text("# mutants of x = 1\n")
    os.utime(mutants, (time.time() - 60, time.time() - 60))
    monkeypatch.setattr(run, "ROOT", checkout)
    run.sync(work, ["gateway/app.py"])
    assert (work / "gateway" / "app.py").read_text() == "x = 2\n"
    assert os.path.getmtime(work / "gateway" / "app.py") > os.path.getmtime(mutants)
