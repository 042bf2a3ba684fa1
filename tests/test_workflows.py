"""The GitHub workflows, checked offline: GitHub's schema, zizmor, and what the pipeline promises
(pinned actions, OIDC only, least privilege, staging before a gated prod, verify after each up,
a drift check per stack)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from infra.stack_files import ROOT, list_stacks
from ops import verify

WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def load(name: str) -> dict:
    # PyYAML reads the `on:` key as True.
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


ALL = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def jobs():
    for name in ALL:
        for job_id, job in load(name)["jobs"].items():
            yield name, job_id, job


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def action(step: dict) -> str:
    return step.get("uses", "").split("@")[0]


def test_the_workflows_exist():
    assert ALL == ["checks.yml", "deploy-stack.yml", "deploy.yml", "drift.yml", "mutation.yml", "pull-request.yml"]


def test_github_workflow_schema():
    done = subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *[WORKFLOWS / n for n in ALL]], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing_even_as_auditor():
    # Over .github/, so Dependabot's configuration is audited too (a missing cooldown is a finding).
    done = subprocess.run([BIN / "zizmor", "--offline", "--persona", "auditor", "--no-progress", WORKFLOWS.parent],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr


def test_every_zizmor_suppression_has_a_written_reason():
    for name in ALL:
        lines = (WORKFLOWS / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if "zizmor: ignore[" in line:
                above = lines[i - 1].strip()
                assert above.startswith("#") and len(above) > 20, f"{name}:{i + 1} suppression without a reason"


def test_every_action_is_pinned_to_a_commit_with_its_version_noted():
    for name in ALL:
        text = (WORKFLOWS / name).read_text()
        for uses, comment in re.findall(r"uses:\s*(\S+)(.*)", text):
            if uses.startswith("./"):
                continue  # this repository's own reusable workflows, at the same commit
            assert SHA_PIN.match(uses), f"{name}: {uses} is not pinned to a commit SHA"
            assert re.search(r"# v\d+\.\d+\.\d+", comment), f"{name}: {uses} has no version comment"


# The inputs each pinned action declares (its action.yml at the version pinned), so a misspelt
# `with:` key fails here instead of being ignored by the runner with a warning. Update with a pin.
INPUTS = {
    "actions/checkout": {  # v7.0.1
        "repository", "ref", "token", "ssh-key", "ssh-known-hosts", "ssh-strict", "ssh-user",
        "persist-credentials", "path", "clean", "filter", "sparse-checkout", "sparse-checkout-cone-mode",
        "fetch-depth", "fetch-tags", "show-progress", "lfs", "submodules", "set-safe-directory",
        "github-server-url", "allow-unsafe-pr-checkout"},
    "actions/setup-python": {  # v7.0.0
        "python-version", "python-version-file", "cache", "architecture", "check-latest", "token",
        "cache-dependency-path", "update-environment", "allow-prereleases", "freethreaded", "pip-version"},
    "actions/upload-artifact": {  # v7.0.0
        "name", "path", "if-no-files-found", "retention-days", "compression-level", "overwrite",
        "include-hidden-files", "archive"},
    "actions/download-artifact": {  # v8.0.1
        "name", "artifact-ids", "path", "pattern", "merge-multiple", "github-token", "repository", "run-id",
        "skip-decompress", "digest-mismatch"},
    "aws-actions/configure-aws-credentials": {  # v6.2.3
        "aws-region", "aws-profile", "overwrite-aws-profile", "role-to-assume", "aws-access-key-id",
        "aws-secret-access-key", "aws-session-token", "web-identity-token-file", "role-chaining", "audience",
        "http-proxy", "no-proxy", "mask-aws-account-id", "role-duration-seconds", "role-external-id",
        "role-session-name", "role-skip-session-tagging", "transitive-tag-keys", "inline-session-policy",
        "managed-session-policies", "output-credentials", "output-env-credentials",
        "unset-current-credentials", "disable-retry", "retry-max-attempts", "special-characters-workaround",
        "use-existing-credentials", "allowed-account-ids", "force-skip-oidc", "action-timeout-s",
        "custom-tags", "sts-endpoint"},
    "docker/setup-qemu-action": {"platforms", "cache-image", "image", "reset"},  # v4.2.0
    "docker/setup-buildx-action": {  # v4.3.0
        "version", "driver", "driver-opts", "buildkitd-flags", "buildkitd-config", "buildkitd-config-inline",
        "use", "name", "endpoint", "platforms", "append", "keep-state", "cache-binary", "cleanup"},
    "pulumi/actions": {  # v7.0.0
        "command", "stack-name", "pulumi-version", "pulumi-version-file", "work-dir", "comment-on-pr",
        "comment-on-pr-number", "comment-on-summary", "github-token", "cloud-url", "secrets-provider",
        "parallel", "message", "config-map", "expect-no-changes", "diff", "replace", "exclude",
        "exclude-dependents", "target", "target-dependents", "refresh", "upsert", "remove", "edit-pr-comment",
        "color", "exclude-protected", "plan", "suppress-outputs", "suppress-progress",
        "always-include-summary", "continue-on-error", "log-verbosity", "log-flow", "debug", "policyPacks",
        "policyPackConfigs"},
}
# The major each action is pinned at, no older: a runtime GitHub retires (node20) goes with the
# majors before these. Dependabot (.github/dependabot.yml) proposes the next ones.
LEAST_MAJOR = {"actions/checkout": 7, "actions/setup-python": 7, "actions/upload-artifact": 7,
               "actions/download-artifact": 8,
               "aws-actions/configure-aws-credentials": 6, "docker/setup-qemu-action": 4,
               "docker/setup-buildx-action": 4, "pulumi/actions": 7}


def test_every_action_is_at_least_at_its_current_major():
    for name in ALL:
        for uses, version in re.findall(r"uses:\s*([^@\s]+)@\S+\s+# v(\d+)\.", (WORKFLOWS / name).read_text()):
            assert int(version) >= LEAST_MAJOR[uses], f"{name}: {uses} v{version} is behind v{LEAST_MAJOR[uses]}"


def test_dependabot_proposes_updates_to_every_lock_and_every_action():
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    done = subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.dependabot",
                           ROOT / ".github" / "dependabot.yml"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    by_ecosystem = {u["package-ecosystem"]: u for u in config["updates"]}
    assert by_ecosystem["github-actions"]["directory"] == "/"
    # Every folder holding a lock compiled from a .in file (`make lock`) is watched.
    tracked = subprocess.run(["git", "ls-files", "*requirements*.in"], cwd=ROOT, check=True,  # noqa: S607
                             capture_output=True, text=True).stdout.split()
    folders = {"/" + str(Path(f).parent).removeprefix(".") for f in tracked}
    assert set(by_ecosystem["pip"]["directories"]) == {f.rstrip("/") or "/" for f in folders}
    for update in config["updates"]:
        assert update["cooldown"]["default-days"] >= 7, update["package-ecosystem"]


def test_every_with_key_is_an_input_of_the_action():
    for name, job_id, job in jobs():
        for s in steps(job):
            if "uses" in s:
                unknown = set(s.get("with", {})) - INPUTS[action(s)]
                assert not unknown, f"{name}:{job_id}: {action(s)} has no input {sorted(unknown)}"


def test_permissions_are_empty_by_default_and_granted_per_job():
    for name in ALL:
        assert load(name)["permissions"] == {}, name
    for name, job_id, job in jobs():
        assert "permissions" in job, f"{name}:{job_id} has no permissions block"
        assert "write-all" not in str(job["permissions"])


def test_aws_access_is_oidc_role_assumption_only():
    for name in ALL:
        text = (WORKFLOWS / name).read_text()
        assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text, name
    assuming = 0
    for name, job_id, job in jobs():
        aws = [s for s in steps(job) if action(s) == "aws-actions/configure-aws-credentials"]
        if aws:
            assuming += 1
            assert aws[0]["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}", (name, job_id)
            # The role comes from the job's environment, so its trust policy can name it.
            assert "environment" in job, (name, job_id)
        wants_token = job.get("permissions", {}).get("id-token") == "write"
        calls_deploy = job.get("uses", "").endswith("deploy-stack.yml")
        assert wants_token == bool(aws or calls_deploy), f"{name}:{job_id}: id-token only where a role is assumed"
    assert assuming == 4  # pull-request preview, stack preview, deploy, drift


def test_checkouts_do_not_keep_the_token():
    for name, job_id, job in jobs():
        for s in steps(job):
            if action(s) == "actions/checkout":
                assert s["with"]["persist-credentials"] is False, (name, job_id)


def test_pull_requests_run_the_checks_then_post_a_staging_preview():
    pr = load("pull-request.yml")
    assert set(pr["on"]) == {"pull_request"}  # never pull_request_target
    assert pr["jobs"]["checks"]["uses"] == "./.github/workflows/checks.yml"
    preview = pr["jobs"]["preview"]
    assert preview["needs"] == "checks"
    assert "head.repo.full_name == github.repository" in preview["if"]
    assert preview["permissions"]["pull-requests"] == "write"
    assert preview["environment"] == {"name": "staging-read", "deployment": False}
    [pulumi] = [s for s in steps(preview) if action(s) == "pulumi/actions"]
    w = pulumi["with"]
    assert (w["command"], w["stack-name"], w["diff"], w["comment-on-pr"]) == ("preview", "staging", True, True)
    assert w["policyPacks"] == "policy"
    # Only the preview may write to the pull request.
    for name, job_id, job in jobs():
        if (name, job_id) != ("pull-request.yml", "preview"):
            assert "pull-requests" not in job.get("permissions", {}), (name, job_id)


def test_checks_run_lint_tests_and_the_offline_plan_for_every_stack():
    checks = load("checks.yml")
    assert set(checks["on"]) == {"workflow_call"}
    text = runs(checks["jobs"]["test"])
    assert "bash .ci/run" in text
    for stack in list_stacks(ROOT):
        assert f"make plan STACK={stack}" in text


def test_main_deploys_staging_then_prod_behind_the_production_environment():
    deploy = load("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"]
    j = deploy["jobs"]
    assert j["staging"]["needs"] == "checks" and j["prod"]["needs"] == "staging"
    assert j["staging"]["with"] == {"stack": "staging", "environment": "staging",
                                    "read-environment": "staging-read"}
    assert j["prod"]["with"] == {"stack": "prod", "environment": "production",
                                 "read-environment": "production-read"}
    for job in (j["staging"], j["prod"]):
        assert job["uses"] == "./.github/workflows/deploy-stack.yml"
        assert "secrets" not in job  # environment secrets only, never passed through


def test_a_stack_is_previewed_read_only_before_its_gated_deploy():
    jobs_ = load("deploy-stack.yml")["jobs"]
    preview, deploy = jobs_["preview"], jobs_["deploy"]
    assert deploy["needs"] == "preview"
    assert preview["environment"] == {"name": "${{ inputs.read-environment }}", "deployment": False}
    [pulumi] = [s for s in steps(preview) if action(s) == "pulumi/actions"]
    w = pulumi["with"]
    assert (w["command"], w["stack-name"], w["comment-on-summary"]) == ("preview", "${{ inputs.stack }}", True)
    assert "pull-requests" not in preview["permissions"]


def test_a_stack_deploy_is_serialized_per_stack_then_verified():
    job = load("deploy-stack.yml")["jobs"]["deploy"]
    assert job["concurrency"] == {"group": "deploy-${{ inputs.stack }}", "cancel-in-progress": False}
    assert job["environment"]["name"] == "${{ inputs.environment }}"
    assert job["env"]["STACK"] == "${{ inputs.stack }}"
    text = runs(job)
    up = text.index('pulumi up --stack "$STACK" --yes')
    out = text.index('pulumi stack output --stack "$STACK" --json > outputs.json')
    check = text.index("python -m ops.verify")
    assert up < out < check
    assert "--policy-pack policy" in text[up:out]
    assert "${{" not in text  # inputs reach the shell through env, never by template expansion


def test_the_verify_command_in_the_workflow_parses():
    text = runs(load("deploy-stack.yml")["jobs"]["deploy"])
    line = next(line for line in text.replace("\\\n", " ").splitlines() if "ops.verify" in line)
    argv = shlex.split(line.split("|")[0].replace('"$STACK"', "staging"))
    args = verify.parser().parse_args(argv[argv.index("ops.verify") + 1:])
    assert (args.stack, str(args.outputs)) == ("staging", "outputs.json")
    assert args.wait >= 300  # new tasks need minutes to pass health checks


def test_drift_is_checked_daily_for_every_stack_with_a_read_only_role():
    drift = load("drift.yml")
    assert drift["on"]["schedule"]
    job = drift["jobs"]["drift"]
    matrix = job["strategy"]["matrix"]["include"]
    assert sorted(m["stack"] for m in matrix) == sorted(list_stacks(ROOT))
    assert all(m["environment"].endswith("-read") for m in matrix)
    assert job["strategy"]["fail-fast"] is False  # one stack's drift does not hide the other's
    assert job["environment"] == {"name": "${{ matrix.environment }}", "deployment": False}
    assert 'pulumi preview --stack "$STACK" --refresh --expect-no-changes' in runs(job)
    report = [s for s in steps(job) if s.get("if") == "failure()"]
    assert report and "gh issue create" in report[0]["run"]


def _pins(path) -> dict[str, str]:
    """name -> version of a lock file (uv's `name==version \\` lines, hashes below)."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", path.read_text(), re.M))


def _make_recipe(target: str) -> str:
    """The lines of a Makefile target's recipe."""
    text = (ROOT / "Makefile").read_text()
    body = text.split(f"\n{target}:", 1)[1].split("\n")[1:]
    return "\n".join(line for line in body[:next(i for i, x in enumerate(body) if not x.startswith("\t"))])


def test_make_test_and_ci_install_the_system_package_the_suite_needs():
    assert "system-packages" in _make_recipe("test")
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_mutation_testing_runs_weekly_in_parts_with_read_access_and_scores_each_package_whole():
    doc = load("mutation.yml")
    (cron,) = [entry["cron"] for entry in doc["on"]["schedule"]]
    minute, hour, day, month, weekday = cron.split()
    assert day == month == "*" and weekday.isdigit() and minute.isdigit() and hour.isdigit(), "weekly"
    assert doc["permissions"] == {}
    mutate, score = doc["jobs"]["mutate"], doc["jobs"]["score"]
    assert mutate["permissions"] == score["permissions"] == {"contents": "read"}
    from mutation.packages import BY_NAME
    parts = [(p["package"], p["shard"]) for p in mutate["strategy"]["matrix"]["include"]]
    for name in BY_NAME:  # every package, each part of its split once
        shards = sorted(shard for package, shard in parts if package == name)
        (n,) = {int(shard.split("/")[1]) for shard in shards}
        assert shards == [f"{k}/{n}" for k in range(1, n + 1)]
    assert len(parts) == len(set(parts)) and mutate["strategy"]["fail-fast"] is False
    assert mutate["timeout-minutes"] <= 360, "GitHub stops a job at 6 hours"
    (step,) = [s for s in steps(mutate) if "make mutate" in s.get("run", "")]
    assert step["run"] == 'make mutate PACKAGES="$PACKAGE" SHARD="$SHARD"'
    assert step["env"] == {"PACKAGE": "${{ matrix.package }}", "SHARD": "${{ matrix.shard }}"}
    assert "system-packages" in _make_recipe("mutate")  # installs redis-server, as `make test` does
    assert "--shard $(SHARD)" in _make_recipe("mutate")
    (upload,) = [s for s in steps(mutate) if action(s) == "actions/upload-artifact"]
    assert upload["if"] == "always()" and upload["with"]["include-hidden-files"] is True
    assert upload["with"]["path"].split() == [".mutation/results/", ".mutation/survivors.txt"]
    assert "${{ strategy.job-index }}" in upload["with"]["name"], "one artifact per part"
    # The score runs when parts failed too (a missing part fails it), over every part's results.
    assert score["needs"] == "mutate" and score["if"] == "always()"
    (download,) = [s for s in steps(score) if action(s) == "actions/download-artifact"]
    prefix = upload["with"]["name"].split("$")[0]
    assert download["with"] == {"pattern": prefix + "*", "path": "parts"}
    (combine,) = [s for s in steps(score) if "mutation.run" in s.get("run", "")]
    assert combine["run"] == "python3 -m mutation.run --combine parts/*/results/*.json"


def test_the_cli_version_file_satisfies_the_sdk_requirement():
    version = (ROOT / ".pulumi-version").read_text().strip()
    sdk = next(Requirement(line) for line in (ROOT / "requirements.in").read_text().splitlines()
               if line.startswith("pulumi>") or line.startswith("pulumi="))
    assert sdk.specifier.contains(version)
    assert _pins(ROOT / "requirements.txt")["pulumi"] == version, "the CLI and the locked SDK agree"


def test_every_install_is_locked_with_hashes_and_the_locks_agree():
    locks = ["requirements.txt", "requirements-dev.txt", "gateway/requirements.txt",
             "policy/requirements.txt", "requirements-uv.txt"]
    dev = _pins(ROOT / "requirements-dev.txt")
    for name in locks:
        text = (ROOT / name).read_text()
        pins = _pins(ROOT / name)
        assert pins and text.count("--hash=sha256:") >= len(pins), name
        for package, version in pins.items():
            if name != "requirements-uv.txt":
                assert dev.get(package) == version, f"{name}: {package} {version} but dev has {dev.get(package)}"
    make = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r" not in make and make.count("--require-hashes") >= 5
    dockerfile = (ROOT / "gateway" / "Dockerfile").read_text()
    assert "-r /tmp/requirements.txt" in dockerfile  # the lock with hashes: pip checks every one


@pytest.mark.parametrize("target", ["venvs", "plan"])
def test_the_make_targets_the_workflows_call_exist(target):
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_job_that_previews_or_deploys_can_build_the_arm64_image():
    """preview and up build gateway/ (service.image: build); both stacks are ARM64."""
    for name, job_id, job in jobs():
        names = [action(s) for s in steps(job)]
        pulumi_runs = "pulumi/actions" in names or "pulumi up" in runs(job)
        if not pulumi_runs:
            continue
        assert "docker/setup-qemu-action" in names and "docker/setup-buildx-action" in names, (name, job_id)
        qemu = next(s for s in steps(job) if action(s) == "docker/setup-qemu-action")
        assert "arm64" in qemu["with"]["platforms"]
        first_pulumi = min(i for i, n in enumerate(names) if n == "pulumi/actions")
        assert names.index("docker/setup-buildx-action") < first_pulumi, (name, job_id)


def _set_up(tmp_path, *on_path: str) -> subprocess.CompletedProcess:
    for name in on_path:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    return subprocess.run(["/bin/bash", str(ROOT / ".ci" / "system-packages")], env={"PATH": str(tmp_path)},
                          capture_output=True, text=True)


@pytest.mark.parametrize(("on_path", "missing"), [
    ((), "redis-server haproxy"), (("valkey-server",), "haproxy"), (("haproxy",), "redis-server"),
    (("redis-server",), "haproxy")])
def test_without_a_package_or_apt_the_set_up_says_what_to_install(tmp_path, on_path, missing):
    done = _set_up(tmp_path, *on_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"make test needs {missing} on PATH: install with your package manager")


@pytest.mark.parametrize("server", ["valkey-server", "redis-server"])
def test_with_a_server_and_haproxy_on_path_the_set_up_does_nothing(tmp_path, server):
    done = _set_up(tmp_path, server, "haproxy")
    assert (done.returncode, done.stderr) == (0, "")
