"""What a reviewer reads: the diff between stacks, and a plan that is deterministic, clean JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from infra.stack_files import ROOT
from offline import diff, plan


@pytest.fixture(scope="module")
def shown(staging, prod) -> str:
    return diff.diff("staging", "prod", syntheses={"staging": staging, "prod": prod})


def _leaves(stack: str) -> dict:
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return diff.leaves({k if ":" in k else f"llm-service:{k}": v for k, v in doc.items()})


def test_every_config_key_that_differs_between_the_shipped_files_shows_up(shown):
    a, b = _leaves("staging"), _leaves("prod")
    differing = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
    assert len(differing) > 20
    config = shown.split("\nresources in one stack only:")[0]
    for key in differing:
        assert f"  {key}: " in config, key
    assert len([ln for ln in config.splitlines() if ln.startswith("  ")]) == len(differing)


def test_resources_settings_and_cost_that_differ(shown):
    assert "  only in prod: aws:ec2/natGateway:NatGateway  network-nat-2" in shown
    assert "  only in prod: aws:ec2/vpcEndpoint:VpcEndpoint  network-kms" in shown
    assert "cache-group: nodeType 'cache.t4g.micro' -> 'cache.m7g.large'" in shown
    assert "service-task: cpu '512' -> '1024'" in shown
    assert "service-scaling: maxCapacity 3 -> 12" in shown
    assert "secrets-key: protect False -> True" in shown
    assert "service-logs: retentionInDays 14 -> 90" in shown
    assert re.search(r"count of aws:ec2/natGateway:NatGateway: 1 -> 3", shown)
    assert re.search(r"AWS a month: \$[\d,.]+ -> \$[\d,.]+ \(\+", shown)


def _differ(inputs_a: dict, inputs_b: dict, typ: str = "t"):
    """Two stacks, a and b, of one resource each (type `typ`, name r), with these inputs."""
    from types import SimpleNamespace

    from offline.synth import Declared

    return tuple(SimpleNamespace(stack=name, resources=[Declared(typ, "r", False, inputs=inputs)])
                 for name, inputs in (("a", inputs_a), ("b", inputs_b)))


def _nested(path: str, value) -> dict:
    node = value
    for part in reversed(path.removeprefix("len:").split(".")):
        node = {part: node}
    return node


@pytest.mark.parametrize("typ,path", [(t, p) for t, paths in diff.SETTINGS.items() for p in paths])
def test_each_setting_the_diff_promises_is_shown_when_it_alone_differs(typ, path):
    a_value, b_value = ([1], [1, 2]) if path.startswith("len:") else ("one", "two")
    only, settings = diff.resource_lines(*_differ(_nested(path, a_value), _nested(path, b_value), typ))
    shown = "count 1 -> 2" if path.startswith("len:") else "'one' -> 'two'"
    assert only == [] and settings == [f"  {typ}  r: {path.removeprefix('len:')} {shown}"]
    assert diff.resource_lines(*_differ(_nested(path, a_value), _nested(path, a_value), typ)) == ([], [])


def test_the_diff_is_the_reviewed_one(staging, prod):
    """staging -> prod as a reviewer reads it, line for line (UPDATE_GOLDEN=1 rewrites it)."""
    shown = diff.diff("staging", "prod", syntheses={"staging": staging, "prod": prod}) + "\n"
    golden = ROOT / "tests" / "golden" / "diff-staging-prod.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(shown)
    assert shown == golden.read_text()


def test_diff_command_exits_2_with_one_line_for_a_stack_that_is_not_there(capsys, tmp_path):
    (tmp_path / "Pulumi.staging.yaml").write_text((ROOT / "Pulumi.staging.yaml").read_text())
    assert diff.main(["--from", "staging", "--to", "nowhere", "--dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: no stack file Pulumi.nowhere.yaml; stacks: ['staging']\n"


def test_a_stack_against_itself_differs_in_nothing(staging):
    same = diff.diff("staging", "staging", syntheses={"staging": staging})
    assert "config:\n  (the same)" in same and "resources in one stack only:\n  (none)" in same
    assert "settings that differ:\n  (none)" in same


def test_json_plan_is_byte_identical_across_processes_and_carries_what_a_reviewer_needs(capsys):
    """Here and in another process with another hash seed: ids once came from Python's randomised
    hash(), which two runs in one process cannot show (the seed is per process)."""
    assert plan.main(["--stack", "prod", "--json"]) == 0
    here = capsys.readouterr().out
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    other = subprocess.run([sys.executable, "-m", "offline.plan", "--stack", "prod", "--json"], cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True,
                           timeout=180)
    assert other.returncode == 0, other.stderr
    outputs = [here, other.stdout]
    assert outputs[0] == outputs[1]
    doc = json.loads(outputs[0])
    assert doc["summary"]["cache"] == "cache.m7g.large x 2" and doc["summary"]["azs"] == 3
    assert doc["policies"]["ran"] >= 16 and doc["policies"]["violations"] == []
    assert doc["cost"]["monthlyTotal"] > doc["cost"]["awsTotal"] > 0
    task = next(r for r in doc["resources"] if r["type"] == "aws:ecs/taskDefinition:TaskDefinition")
    assert isinstance(task["inputs"]["containerDefinitions"], list), "parsed, not a JSON string"
    role = next(r for r in doc["resources"] if r["type"] == "aws:iam/role:Role")
    assert isinstance(role["inputs"]["assumeRolePolicy"], dict)


def test_text_plan_names_what_runs_and_ends_with_the_monthly_cost(capsys):
    assert plan.main(["--stack", "staging"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[0] == "image" and "0.5 vCPU, 1 GB, ARM64, 1 to 3 tasks" in out[2]
    assert "cache.t4g.micro x 1" in out[3]
    assert re.fullmatch(r"policies: \d+ ran, all passed", out[-2])
    assert out[-1].startswith("monthly cost: $")


def test_make_writes_nothing_but_the_commands_output_to_stdout():
    """`make -s plan JSON=1 > plan.json`: no recipe echo (@), installs report on stderr."""
    text = (ROOT / "Makefile").read_text()
    for target in ("plan", "cost", "diff"):
        recipe = text.split(f"\n{target}:")[1].split("\n\n")[0].splitlines()[1:]
        assert recipe and all(line.startswith("\t@") for line in recipe), target
    installs = text.split("$(VENV)/.installed:")[1].split("\n\n")[0].splitlines()[1:]
    assert all(line.startswith("\t@") and (line.endswith(">&2") or "touch" in line) for line in installs)


def _report(**usd: float):
    """A cost report of these lines (item: dollars), with $2.50 of tokens."""
    from types import SimpleNamespace

    lines = [SimpleNamespace(item=item, usd=v) for item, v in usd.items()]
    return SimpleNamespace(lines=lines, total=sum(usd.values()), tokens=SimpleNamespace(with_cache=2.5))


def test_cost_changes_come_largest_first_and_ties_by_name_in_any_process():
    """The order once depended on string hashing: two changes of $0.80 swapped between runs."""
    report = _report
    tied = ["echo", "delta", "charlie", "bravo", "alpha"]  # five changes of $0.80: 1 order in 120 by chance
    a = report(big=5.0, **{n: 0.8 for n in tied})
    b = report(big=1.0, **{n: 0.0 for n in tied})
    expected = ["  big: $5.00 -> $1.00"] + [f"  {n}: $0.80 -> $0.00" for n in sorted(tied)]
    assert diff.cost_lines(a, b)[:6] == expected


def test_diff_command_defaults_to_staging_against_prod(capsys):
    assert diff.main([]) == 0
    out, err = capsys.readouterr()
    assert out == (ROOT / "tests" / "golden" / "diff-staging-prod.txt").read_text() and err == ""


def test_diff_command_says_what_it_is_and_takes(capsys):
    with pytest.raises(SystemExit) as done:
        diff.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith("usage: python -m offline.diff [-h] [--from FIRST] [--to SECOND] [--dir DIR]")
    assert "What differs between two stacks, grouped as a reviewer reads it." in out
    described = " ".join(out.split("\n\n")[1].split())
    assert described == "What differs between two stacks, grouped as a reviewer reads it.", \
        "the description is the docstring's first line, all of it and no more"
    assert re.search(r"--dir DIR\s+where the stack files are", out)


def test_diff_command_exits_2_with_the_config_error_of_a_bad_stack_file(capsys, tmp_path):
    for stack in ("staging", "prod"):
        (tmp_path / f"Pulumi.{stack}.yaml").write_text((ROOT / f"Pulumi.{stack}.yaml").read_text())
    bad = yaml.safe_load((tmp_path / "Pulumi.prod.yaml").read_text())
    bad["config"]["llm-service:cache"]["nodes"] = 0
    (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(bad))
    assert diff.main(["--dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("config error: llm-service:cache.nodes") and err.count("\n") == 1


def test_a_key_set_in_one_stack_only_shows_as_not_set_in_the_other():
    assert diff.config_lines({"a": 1}, {"a": 1, "b": {"c": 2}}) == ["  b.c: '(not set)' -> 2"]
    assert diff.config_lines({"b": [1, 2]}, {}) == ["  b: [1, 2] -> '(not set)'"]
    import datetime
    assert diff.config_lines({"d": [datetime.date(2026, 1, 1)]}, {"d": []}) == ['  d: ["2026-01-01"] -> []'], \
        "YAML dates in a list are shown, not refused"


def test_a_type_declared_in_one_stack_only_is_counted_from_zero():
    from offline.synth import Declared

    a, b = _differ({}, {})
    b.resources.append(Declared("aws:ec2/eip:Eip", "nat-2", False))
    only, settings = diff.resource_lines(a, b)
    assert only == ["  only in b: aws:ec2/eip:Eip  nat-2"]
    assert settings == ["  count of aws:ec2/eip:Eip: 0 -> 1"]


def test_a_list_setting_that_is_missing_counts_as_none():
    assert diff._at({"subnets": None}, "len:subnets") == 0 and diff._at({}, "len:a.b") == 0
    assert diff._at({"a": {"b": [1, 2, 3]}}, "len:a.b") == 3 and diff._at({"a": {"b": "x"}}, "a.b") == "x"


def test_cost_lines_show_an_item_from_zero_or_to_zero_and_leave_out_what_rounds_to_no_change():
    report = _report
    lines = diff.cost_lines(report(gone=3.0, same=1.0, tiny=1.0), report(new=2.0, same=1.0, tiny=1.004))
    assert lines[:2] == ["  gone: $3.00 -> $0.00", "  new: $0.00 -> $2.00"]
    assert lines[2] == "  AWS a month: $5.00 -> $4.00 (-1.00); LLM tokens: $2.50 -> $2.50"
    assert len(lines) == 3, "a change under a cent is not a change"
    # Largest first, whichever side an item is missing from; an item at $0.00 on one side only is no change.
    lines = diff.cost_lines(report(gone=1.5, free=0.0), report(new=2.0, also_free=0.001))
    assert lines[:2] == ["  new: $0.00 -> $2.00", "  gone: $1.50 -> $0.00"] and len(lines) == 3
