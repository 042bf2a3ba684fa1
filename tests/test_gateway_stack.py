"""How the stack builds, ships and configures the gateway: the image (built from gateway/, pushed
to the stack's repository, deployed by digest), the GATEWAY_* environment derived from config,
the config rules that keep streams alive, and the Dockerfile's promises to the task definition."""

from __future__ import annotations

import re

import pytest

from components.image import content_tag
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
    assert image.inputs["context"]["location"] == str(ROOT / "gateway")
    repo = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/llm-service-{stack.stack}"
    assert image.inputs["tags"] == [f"{repo}:{content_tag(ROOT / 'gateway')}"]
    (registry,) = image.inputs["registries"]
    assert registry["address"] == repo and "registries" in image.secret_inputs, "the ECR token stays secret"


def test_the_task_runs_the_built_image_by_digest(stack):
    ref = container(stack)["image"]
    repo, _, digest = ref.partition("@")
    assert repo == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/llm-service-{stack.stack}"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), "a digest, never a mutable tag"
    assert stack.outputs["image"] == ref


def test_the_tag_changes_with_the_content_and_only_with_it(tmp_path):
    (tmp_path / "app.py").write_text("print(1)")
    first = content_tag(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.pyc").write_bytes(b"\0")
    assert content_tag(tmp_path) == first, "bytecode caches do not change the image"
    (tmp_path / "app.py").write_text("print(2)")
    assert content_tag(tmp_path) != first


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
    assert int(env["GATEWAY_DRAIN_SECONDS"]) < svc.stop_timeout_seconds == container(stack)["stopTimeout"]
    assert env["GATEWAY_WORKERS"] == str(max(1, svc.cpu // 1024))
    assert env["PORT"] == str(svc.container_port)


def test_sse_keepalives_fit_the_idle_timeout_three_times():
    with pytest.raises(ConfigError) as err:
        load(*with_changes("staging", gateway__sseKeepaliveSeconds=201))
    assert str(err.value) == ("llm-service:gateway.sseKeepaliveSeconds: got 201; at most a third of "
                              "loadBalancer.idleTimeoutSeconds (600): 200 or less, or the load balancer "
                              "cuts streams whose model is thinking")
    load(*with_changes("staging", gateway__sseKeepaliveSeconds=200))


def test_a_shorter_idle_timeout_tightens_the_keepalive_rule():
    with pytest.raises(ConfigError, match="gateway.sseKeepaliveSeconds: got 15; at most a third of "
                                          r"loadBalancer.idleTimeoutSeconds \(40\)"):
        load(*with_changes("staging", loadBalancer__idleTimeoutSeconds=40))


def test_retries_fit_half_the_idle_timeout():
    with pytest.raises(ConfigError, match=r"^llm-service:gateway.retryBudgetSeconds: got 301; at most half"):
        load(*with_changes("staging", gateway__retryBudgetSeconds=301))


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
