"""`make mutate`'s own logic: what counts as killed, the equivalents file, the target, the config
each package runs with, and the bridge that lets a gateway process report what it ran."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

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
