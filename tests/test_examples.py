"""Each component is one file a platform team can copy: its example runs with that file alone
beside it, under a minimal mock (tests/run_examples.py, not the project's own mocks), in an
interpreter where nothing else of this repository is importable (one interpreter imports Pulumi,
then forks a child per example)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack_files import ROOT
from offline import component_docs

COMPONENTS = component_docs.COMPONENTS
RUNNER = Path(__file__).parent / "run_examples.py"


# The type token's module, where it is not the file's name: the secrets component was renamed
# (a file named secrets.py beside a program shadows Python's own `secrets` module) and keeps its
# token, so a stack deployed before keeps its resources' URNs.
TOKEN_MODULE = {"secrets_store": "secrets"}


def _copy(component: str, root: Path) -> Path:
    folder = root / component
    shutil.copytree(ROOT / "examples" / component, folder)
    shutil.copy(ROOT / "components" / f"{component}.py", folder / f"{component}.py")
    return folder


def _result(folder: Path, runner_err: str) -> tuple[bool, list, str]:
    declared, error = folder / "declared.json", folder / "error.txt"
    if declared.exists():
        return True, json.loads(declared.read_text()), ""
    return False, [], (error.read_text() if error.exists() else runner_err)[-3000:]


def _aws_modules() -> str:
    """The pulumi_aws modules the components use (`aws.ec2.Vpc` -> ec2)."""
    sources = "".join((ROOT / "components" / f"{c}.py").read_text() for c in COMPONENTS)
    return ",".join(sorted(set(re.findall(r"\baws\.([a-z0-9_]+)\.[A-Z]", sources))))


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, tuple[bool, list, str]]:
    root = tmp_path_factory.mktemp("examples")
    shutil.copy(RUNNER, root / "run_examples.py")
    shutil.copy(ROOT / "infra" / "private_api.py", root / "private_api.py")
    folders = [_copy(c, root) for c in COMPONENTS]
    argv = [sys.executable, "-I", "run_examples.py", "--preload", _aws_modules(), *COMPONENTS]
    done = subprocess.run(argv, cwd=root, timeout=180, capture_output=True, text=True,
                          check=False)  # each example's outcome is in its folder
    return {c: _result(f, done.stderr) for c, f in zip(COMPONENTS, folders, strict=True)}


def _of(declared: list, typ: str) -> list[dict]:
    return [r["inputs"] for r in declared if r["type"] == typ]


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_example_runs_with_its_component_file_alone(ran, component):
    ok, declared, err = ran[component]
    assert ok, err
    (token,) = {r["type"] for r in declared if r["type"].startswith("llm-service:")}
    assert token.startswith(f"llm-service:{TOKEN_MODULE.get(component, component)}:"), token


def test_what_the_examples_declare(ran):
    d = {c: ran[c][1] for c in COMPONENTS}
    (vpc,) = _of(d["network"], "aws:ec2/vpc:Vpc")
    assert vpc["cidrBlock"] == "10.40.0.0/16" and len(_of(d["network"], "aws:ec2/subnet:Subnet")) == 6
    assert len(_of(d["network"], "aws:ec2/natGateway:NatGateway")) == 1
    (secret,) = _of(d["secrets_store"], "aws:secretsmanager/secret:Secret")
    assert secret["name"] == "my-app/dev/openai-api-key"
    assert _of(d["secrets_store"], "aws:kms/key:Key")[0]["enableKeyRotation"] is True
    (listener,) = [x for x in _of(d["load_balancer"], "aws:lb/listener:Listener") if x["port"] == 443]
    assert listener["sslPolicy"].startswith("ELBSecurityPolicy-TLS13-") and listener["certificateArn"]
    assert _of(d["load_balancer"], "aws:lb/loadBalancer:LoadBalancer")[0]["idleTimeout"] == 600
    (repo,) = _of(d["registry"], "aws:ecr/repository:Repository")
    assert repo["name"] == "my-app" and repo["imageTagMutability"] == "IMMUTABLE"
    (image,) = _of(d["image"], "docker-build:index:Image")
    assert image["platforms"] == ["linux/arm64"] and image["push"] is True
    (task,) = _of(d["service"], "aws:ecs/taskDefinition:TaskDefinition")
    (app,) = json.loads(task["containerDefinitions"])
    assert app["readonlyRootFilesystem"] is True and app["user"] == "1000:1000"
    assert (task["cpu"], task["memory"]) == ("512", "1024")
    (group,) = _of(d["cache"], "aws:elasticache/replicationGroup:ReplicationGroup")
    assert group["transitEncryptionEnabled"] and group["atRestEncryptionEnabled"]
    assert (group["engine"], group["nodeType"]) == ("valkey", "cache.t4g.micro")
    (acl,) = _of(d["edge"], "aws:wafv2/webAcl:WebAcl")
    assert any("rateBasedStatement" in (r.get("statement") or {}) for r in acl["rules"])
    assert len(_of(d["monitoring"], "aws:cloudwatch/metricAlarm:MetricAlarm")) >= 15
    assert _of(d["monitoring"], "aws:sns/topicSubscription:TopicSubscription")[0]["endpoint"] == \
        "oncall@mycompany.com"
    (budget,) = _of(d["budget"], "aws:budgets/budget:Budget")
    assert budget["limitAmount"] == "100.00"


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_docstring_lists_args_outputs_and_its_example_as_the_code_says(component):
    text = (ROOT / "components" / f"{component}.py").read_text()
    assert component_docs.updated(component) == text, "run `python -m offline.component_docs --write`"
    doc = text.split('"""')[1]
    assert "Creates:" in doc and "Cost:" in doc and "Args (`" in doc and "Outputs:" in doc
    outputs = doc.split("Outputs:", 1)[1].split("\n\n", 1)[0]
    names = [n.strip(" .\n") for n in outputs.split(",")]
    assert names and all(re.fullmatch(r"[a-z_]+", n) for n in names), f"Outputs lists no names: {outputs!r}"


def test_a_docstring_that_drifted_is_brought_back_to_the_code():
    text = (ROOT / "components" / "cache.py").read_text()
    drifted = text.replace("    nodes: int = 1\n", "    nodes: int = 2\n", 1).replace(
        'replication_group_id="my-app-cache"))', 'replication_group_id="old"))', 1)
    assert drifted != text
    assert component_docs.updated("cache", drifted) == text


def test_components_import_nothing_of_this_project():
    for component in COMPONENTS:
        source = (ROOT / "components" / f"{component}.py").read_text()
        assert "from components" not in source and "from infra" not in source and "import infra" not in source
