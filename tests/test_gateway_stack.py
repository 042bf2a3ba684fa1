"""How the stack builds, ships and configures the gateway: the image (built from gateway/, pushed
to the stack's repository, deployed by digest), the GATEWAY_* environment derived from config,
the config rules that keep streams alive, and the Dockerfile's promises to the task definition."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from components.image import content_tag, image_files
from infra.config import ConfigError, load
from infra.stack_files import ROOT
from tests.conftest import config_of, container, with_changes

IMAGE = "docker-build:index:Image"
DOCKERFILE = (ROOT / "gateway" / "Dockerfile").read_text()


def env_of(stack) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(stack)["environment"]}


def test_the_gateway_is_built_for_the_stacks_architecture_and_pushed(stack):
    image = stack.one(IMAGE)
    platform = {"ARM64": "linux/arm64", "X86_64": "linux/amd64"}[config_of(stack).service.architecture]
    assert image.inputs["platforms"] == [platform] and image.inputs["push"] is True
    arch = config_of(stack).service.architecture
    tag = content_tag(ROOT / "gateway", arch)
    # A relative path (the provider diffs it) to a copy named after the tag, with uniform modes.
    location = image.inputs["context"]["location"]
    assert location == os.path.join(".build", tag) and image.inputs["dockerfile"]["location"] == \
        os.path.join(location, "Dockerfile")
    staged = ROOT / location  # the tests run from the repository's root
    assert [(r, d) for r, d, _ in image_files(staged)] == [(r, d) for r, d, _ in image_files(ROOT / "gateway")]
    assert {f.stat().st_mode & 0o777 for f in staged.rglob("*") if f.is_file()} <= {0o644, 0o755}
    repo = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/llm-service-{stack.stack}"
    assert image.inputs["tags"] == [f"{repo}:{tag}"]
    (registry,) = image.inputs["registries"]
    assert registry["address"] == repo and "registries" in image.secret_inputs, "the ECR token stays secret"


def test_the_task_runs_the_built_image_by_digest(stack):
    ref = container(stack)["image"]
    repo, _, digest = ref.partition("@")
    assert repo == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/llm-service-{stack.stack}"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), "a digest, never a mutable tag"
    assert stack.outputs["image"] == ref


def test_the_tag_changes_with_what_changes_the_image_and_only_with_it(tmp_path):
    (tmp_path / "app.py").write_text("print(1)")
    (tmp_path / "app.py").chmod(0o644)
    first = content_tag(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.pyc").write_bytes(b"\0")
    assert content_tag(tmp_path) == first, "bytecode caches do not change the image"
    (tmp_path / "app.py").chmod(0o664)
    assert content_tag(tmp_path) == first, "a checkout under another umask builds the same image"
    assert content_tag(tmp_path, "X86_64") != first and content_tag(tmp_path, "X86_64").startswith("amd64-")
    (tmp_path / "app.py").chmod(0o755)
    assert content_tag(tmp_path) != first, "an executable bit is in the image"
    (tmp_path / "app.py").chmod(0o644)
    (tmp_path / "app.py").write_text("print(2)")
    assert content_tag(tmp_path) != first


IMAGE_STEP = """
import json, sys
sys.path.insert(0, sys.argv[1])
from infra import program
from offline.synth import synthesize

def image_only():
    st = program.checked_config(offline=True)
    program.image(st, program.secrets(st))

print(json.dumps(synthesize("staging", program=image_only).one("docker-build:index:Image").inputs,
                 sort_keys=True))
"""


def _checkout(root, mode: int):
    """The files the stack program reads, copied as a checkout would hold them, every file of
    the gateway with `mode`."""
    for part in ("infra", "components", "offline", "gateway"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__", ".build"))
    for name in ("Pulumi.yaml", "Pulumi.staging.yaml"):
        shutil.copy(ROOT / name, root / name)
    for f in (root / "gateway").rglob("*"):
        f.chmod(mode if f.is_file() else mode | 0o111)


def test_the_same_commit_from_two_checkouts_declares_the_same_image(tmp_path):
    """Two checkouts at different paths, one made under umask 002 (group-writable files): as
    Pulumi runs the program (from the `main` folder), the image's inputs must be identical, or
    the provider rebuilds and re-pushes a tag the IMMUTABLE repository already holds."""
    seen = []
    for name, mode in (("laptop", 0o644), ("ci-runner/work", 0o664)):
        root = tmp_path / name
        _checkout(root, mode)
        out = subprocess.run([sys.executable, "-c", IMAGE_STEP, str(root)], cwd=root / "infra",
                             capture_output=True, text=True, timeout=120, check=True)
        seen.append(json.loads(out.stdout))
    assert seen[0] == seen[1]
    assert not seen[0]["context"]["location"].startswith("/"), "an absolute path differs per checkout"
    assert seen[0]["context"]["location"] == ".build/" + seen[0]["tags"][0].rsplit(":", 1)[1]
    assert (tmp_path / "laptop" / "infra" / seen[0]["context"]["location"] / "Dockerfile").is_file()


def test_an_image_of_your_own_is_used_as_given_and_nothing_is_built(synth):
    own = "public.ecr.aws/acme/llm-app:1.4.2"
    s = synth("staging", service__image=own)
    assert s.of_type(IMAGE) == []
    assert container(s)["image"] == own
    # Not the gateway's image: the health check is curl against the health path, unless set.
    assert container(s)["healthCheck"]["command"] == [
        "CMD-SHELL", "curl -fsS http://localhost:8080/healthz || exit 1"]


def test_building_needs_the_stacks_repository():
    with pytest.raises(ConfigError, match=r"^llm-service:service.ecrRepository: got False; service.image: build"):
        load(*with_changes("staging", service__ecrRepository=False))
    load(*with_changes("staging", service__ecrRepository=False, service__image="public.ecr.aws/acme/app:1"))


def test_gateway_environment_follows_config(stack):
    cfg, env = config_of(stack), env_of(stack)
    g, lb, svc = cfg.gateway, cfg.load_balancer, cfg.service
    assert env["GATEWAY_SSE_KEEPALIVE_SECONDS"] == str(g.sse_keepalive_seconds)
    assert env["GATEWAY_TCP_KEEPALIVE_SECONDS"] == str(g.upstream_tcp_keepalive_seconds)
    assert env["GATEWAY_MAX_ATTEMPTS"] == str(g.max_attempts)
    assert env["GATEWAY_RETRY_BUDGET_SECONDS"] == str(g.retry_budget_seconds)
    assert env["GATEWAY_MAX_REQUEST_BYTES"] == str(g.max_request_megabytes * 1024 * 1024)
    assert env["GATEWAY_LOG_PROMPTS"] == "false"
    # The ALB must close idle connections, not the target (else the ALB answers 502).
    assert int(env["GATEWAY_CLIENT_KEEPALIVE_SECONDS"]) > lb.idle_timeout_seconds
    # Draining ends before ECS sends SIGKILL at the stop timeout.
    assert int(env["GATEWAY_DRAIN_SECONDS"]) == svc.stop_timeout_seconds - 5
    assert svc.stop_timeout_seconds == container(stack)["stopTimeout"]
    # A draining task stops accepting once the load balancer, which health-checks a target it
    # holds every interval, has sent nothing for an interval and a check's timeout.
    hc = stack.one("aws:lb/targetGroup:TargetGroup").inputs["healthCheck"]
    assert float(env["GATEWAY_DRAIN_QUIET_SECONDS"]) == hc["interval"] + hc["timeout"] == 20
    # ...and stops at the latest once failing checks have taken the target out of rotation.
    assert float(env["GATEWAY_DRAIN_ACCEPT_SECONDS"]) == hc["unhealthyThreshold"] * hc["interval"] + hc["timeout"]
    assert env["GATEWAY_WORKERS"] == str(max(1, svc.cpu // 1024))
    assert env["PORT"] == str(svc.container_port)


def test_the_stream_bound_of_each_stack_is_what_the_plan_states(staging, prod):
    """Deploys and scale-in stop a task only after the deregistration delay; staging's Spot
    interruptions have the drain alone, which the config keeps at least as long."""
    from infra.config import stream_bound_seconds
    from offline.plan import summary
    assert stream_bound_seconds(config_of(staging)) == 60
    assert stream_bound_seconds(config_of(prod)) == 300
    assert summary(staging, config_of(staging))["streams"] == \
        "up to 60 s survive a deploy or scale-in (and a Spot interruption)"
    assert summary(prod, config_of(prod))["streams"] == "up to 300 s survive a deploy or scale-in"
    assert stack_delay(prod) == 300 and stack_delay(staging) == 60


def stack_delay(s) -> int:
    return s.one("aws:lb/targetGroup:TargetGroup").inputs["deregistrationDelay"]


def test_on_spot_the_delay_may_reach_the_drain_and_on_demand_anything_alb_allows():
    load(*with_changes("staging", loadBalancer__deregistrationDelaySeconds=65))  # = 120 - 5 - 50
    load(*with_changes("prod", loadBalancer__deregistrationDelaySeconds=3600))     # no Spot in prod


def test_tcp_keepalive_leaves_before_the_nat_gateway_forgets_the_flow():
    with pytest.raises(ConfigError) as err:
        load(*with_changes("staging", gateway__upstreamTcpKeepaliveSeconds=340))
    assert str(err.value).startswith("llm-service:gateway.upstreamTcpKeepaliveSeconds: got 340; the first "
                                     "keepalive probe")
    assert "at most 334" in str(err.value)
    load(*with_changes("staging", gateway__upstreamTcpKeepaliveSeconds=334))


# --- the Dockerfile's promises -----------------------------------------------------------------

def test_the_image_runs_as_the_tasks_user(stack):
    assert re.search(r"^USER (\S+)$", DOCKERFILE, re.M)[1] == container(stack)["user"] == "1000:1000"


def test_the_image_declares_tmp_a_volume_so_the_non_root_user_can_write_there(stack):
    """Fargate's bind mount at /tmp takes the mode of a VOLUME at that path (ECS developer guide,
    bind mounts); without it the mount is root-owned 0755."""
    assert 'VOLUME ["/tmp"]' in DOCKERFILE and "chmod 1777 /tmp" in DOCKERFILE
    assert {m["containerPath"] for m in container(stack)["mountPoints"]} >= {"/tmp"}


def test_the_image_is_multi_stage_from_ecr_public_and_starts_the_gateway():
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(froms) == 2, "dependencies are built in a stage of their own"
    assert re.search(r"^ARG PYTHON=public\.ecr\.aws/docker/library/python:\S+$", DOCKERFILE, re.M)
    assert 'CMD ["python", "-m", "gateway"]' in DOCKERFILE
    assert not re.search(r"^ENTRYPOINT", DOCKERFILE, re.M), "ops.cache overrides the command"
    assert "COPY requirements.txt" in DOCKERFILE and "--only-binary=:all:" in DOCKERFILE


def test_the_image_installs_exactly_the_gateways_runtime():
    """The runtime venv of the contract test and the image install the same file."""
    lock = (ROOT / "gateway" / "requirements.txt").read_text()
    pinned = re.findall(r"^(\S+) \\$", lock, re.M)  # `name==version \` heads each entry
    assert pinned and all(re.fullmatch(r"[a-z0-9_.-]+==[0-9.a-z]+( ; .*)?", p) for p in pinned), pinned
    assert lock.count("--hash=sha256:") >= len(pinned), "every pin has its hashes"
    direct = {line.split("==")[0] for line in (ROOT / "gateway" / "requirements.in").read_text().splitlines()
              if line and not line.startswith("#")}
    assert direct <= {p.split("==")[0] for p in pinned}
