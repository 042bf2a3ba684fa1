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
