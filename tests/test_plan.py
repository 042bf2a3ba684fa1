"""The offline plan command: both stacks print, JSON is machine-readable with secrets redacted,
and bad config exits non-zero with the config message."""

from __future__ import annotations

import json
import shutil

from infra.stack_files import ROOT
from offline import plan


def test_text_plan_shows_the_tree_and_counts(capsys):
    assert plan.main(["--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stack prod: ")
    assert "  llm-service:network:Network  network\n    aws:ec2/vpc:Vpc  network-vpc" in out
    assert "aws:ecs/service:Service  service-service [protected] [ignores desired_count]" in out
    assert "aws:kms/key:Key  secrets-key [protected] [kept on destroy]" in out
    assert "aws:elasticache/replicationGroup:ReplicationGroup  cache-group [protected]" in out
    assert "     3  aws:ec2/natGateway:NatGateway" in out


def test_json_plan_prod_has_more_than_staging(capsys):
    docs = {}
    for stack in ("staging", "prod"):
        assert plan.main(["--stack", stack, "--json"]) == 0
        docs[stack] = json.loads(capsys.readouterr().out)
    count = lambda s, t: docs[s]["counts"].get(t, 0)  # noqa: E731
    assert count("prod", "aws:ec2/subnet:Subnet") > count("staging", "aws:ec2/subnet:Subnet")
    assert count("prod", "aws:ec2/natGateway:NatGateway") > count("staging", "aws:ec2/natGateway:NatGateway")
    task = lambda s: next(r for r in docs[s]["resources"] if r["type"].endswith("TaskDefinition"))  # noqa: E731
    assert int(task("prod")["inputs"]["cpu"]) > int(task("staging")["inputs"]["cpu"])
    target = lambda s: next(r for r in docs[s]["resources"] if r["type"].endswith("target:Target"))  # noqa: E731
    assert target("prod")["inputs"]["maxCapacity"] > target("staging")["inputs"]["maxCapacity"]


def test_json_plan_redacts_secrets(capsys):
    assert plan.main(["--stack", "staging", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    group = next(r for r in doc["resources"] if r["type"].endswith("ReplicationGroup"))
    assert group["inputs"]["authToken"] == "[secret]"
    assert doc["outputs"]["cacheAuthToken"] == "[secret]"
    assert "mock-generated-password" not in json.dumps(doc)


def test_bad_config_exits_2_with_the_message(tmp_path, capsys):
    text = (ROOT / "Pulumi.staging.yaml").read_text().replace("maxTasks: 3", "maxTasks: 0")
    (tmp_path / "Pulumi.broken.yaml").write_text(text)
    assert plan.main(["--stack", "broken", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("config error: llm-service:service.maxTasks: got 0; "
                   "must be at least 1\n")


def test_secure_values_are_read_as_secrets(tmp_path, capsys):
    text = (ROOT / "Pulumi.staging.yaml").read_text().replace("source: external", "source: pulumi")
    text += "  llm-service:openai-api-key:\n    secure: v1:AAAAencryptedAAAA\n"
    (tmp_path / "Pulumi.pm.yaml").write_text(text)
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path)
    assert plan.main(["--stack", "pm", "--dir", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    version = next(r for r in doc["resources"] if r["name"] == "secrets-openai-api-key-value")
    assert version["inputs"]["secretString"] == "[secret]"


def test_unknown_stack_exits_2(capsys):
    assert plan.main(["--stack", "nope"]) == 2
    assert "no stack file Pulumi.nope.yaml" in capsys.readouterr().err
