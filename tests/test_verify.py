"""`python -m ops.verify` against moto in server mode on 127.0.0.1.

A fixture builds what `pulumi up` leaves behind, shaped by the stack's own config and
synthesized outputs (the same alarm names, secret names, budget limit and listeners), then
each test breaks one thing and asserts the exact line that reports it. The build goes through
moto's API once per module and variant; later tests start from a restored snapshot of that state
(tests/moto_server.py), which a test below proves undoes what the previous test broke.

moto does not produce every runtime state (tests/MOTO.md): it keeps ECS runningCount
at 0 and rolloutState IN_PROGRESS, and drops deploymentConfiguration from describe_services.
The `ecs_runtime` fixture sets those fields on moto's real describe_services answer at the
boto3 boundary; every test that changes them says so. Everything else is moto's own state.
The health request goes to a real HTTPS server on 127.0.0.1 whose certificate (from a test CA)
covers the listener certificate's name, not the address it is reached at.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from dataclasses import dataclass, field

import boto3
import pytest
import trustme
from botocore.exceptions import ClientError

from infra.config import load, secret_prefix
from infra.stack_files import read_stack_file
from ops import verify
from tests.conftest import with_changes
from tests.moto_server import at_boundary, own_client

REGION = "us-east-1"
ACCOUNT = "123456789012"


# --- the health endpoint: a real server on 127.0.0.1 ---------------------------------------

class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# The load balancer's certificate is for this name; serviceUrl without a domain is the ALB's own
# DNS name (here 127.0.0.1), which no certificate covers: verify must check against this name.
CERT_NAME = "api.llm-service.internal"
LISTENER_CERT = trustme.CA().issue_cert(CERT_NAME, common_name=CERT_NAME)


def _https(cert) -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _serve(server)
    return f"https://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="session")
def tls_ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def health_server(tls_ca):
    """HTTPS on 127.0.0.1 with a certificate from a trusted CA for CERT_NAME only."""
    return _https(tls_ca.issue_cert(CERT_NAME))


@pytest.fixture
def health(health_server, tls_ca, tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # what OpenSSL's default context trusts
    _Health.status = 200
    yield _Health
    _Health.status = 200


@pytest.fixture(scope="session")
def self_signed_server():
    """HTTPS with a certificate for the right name from a CA nobody trusts."""
    return _https(trustme.CA().issue_cert(CERT_NAME))


@pytest.fixture(scope="session")
def wrong_name_server(tls_ca):
    """HTTPS with a trusted certificate for another name than the listener's."""
    return _https(tls_ca.issue_cert("other.llm-service.internal"))


# --- a deployed stack in moto ----------------------------------------------------------------

@dataclass
class Live:
    stack: str
    outputs: dict
    path: object
    ids: dict = field(default_factory=dict)

    def client(self, service):
        return own_client(service)

    def write(self, **changes):
        self.path.write_text(json.dumps({**self.outputs, **changes}))
        return self.path


def build(stack, synthesized, tmp_path, health_url, *, secret_value=True, cache_failover=None,
          cache_tls=True, client_keys=True) -> Live:
    """What `pulumi up --stack <stack>` leaves behind, as far as the checks look."""
    cfg = load(*read_stack_file(stack))
    c = own_client
    ec2, elb, ecs = c("ec2"), c("elbv2"), c("ecs")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
               for i, az in enumerate("abc")]
    lb = elb.create_load_balancer(Name=f"{stack}-alb", Subnets=subnets, Type="application")
    lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
    tg_arn = elb.create_target_group(
        Name=f"{stack}-tg", Protocol="HTTP", Port=cfg.service.container_port, VpcId=vpc,
        TargetType="ip", HealthCheckPath=cfg.load_balancer.health_check_path,
    )["TargetGroups"][0]["TargetGroupArn"]
    # Imported, not requested: moto makes an RSA key for a request, ~0.1 to 0.4 s a test.
    cert = c("acm").import_certificate(Certificate=LISTENER_CERT.cert_chain_pems[0].bytes(),
                                       PrivateKey=LISTENER_CERT.private_key_pem.bytes())["CertificateArn"]
    elb.create_listener(LoadBalancerArn=lb_arn, Protocol="HTTPS", Port=443,
                        Certificates=[{"CertificateArn": cert}],
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}])
    targets = [{"Id": f"10.20.{i % 3}.{10 + i}", "Port": cfg.service.container_port}
               for i in range(cfg.service.min_tasks)]
    elb.register_targets(TargetGroupArn=tg_arn, Targets=targets)

    name = synthesized.outputs["serviceName"]
    ecs.create_cluster(clusterName=synthesized.outputs["clusterName"])
    ecs.register_task_definition(family=name, containerDefinitions=[
        {"name": "app", "image": cfg.service.image, "memory": cfg.service.memory}])
    ecs.create_service(
        cluster=synthesized.outputs["clusterName"], serviceName=name, taskDefinition=name,
        desiredCount=cfg.service.desired_tasks, launchType="FARGATE",
        deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                                 "maximumPercent": 200, "minimumHealthyPercent": 100})

    key_arn = c("kms").create_key(Description=f"{stack} key")["KeyMetadata"]["Arn"]
    sm = c("secretsmanager")
    secret_arns = {}
    for secret in cfg.secrets.names:
        arn = sm.create_secret(Name=f"{secret_prefix(stack)}/{secret}", KmsKeyId=key_arn)["ARN"]
        if secret_value:
            sm.put_secret_value(SecretId=arn, SecretString="sk-proj-" + "x" * 40)
        secret_arns[secret] = arn
    auth_arn = sm.create_secret(Name=f"{secret_prefix(stack)}/cache-auth-token", KmsKeyId=key_arn,
                                SecretString="t" * 32)["ARN"]
    client_keys_arn = sm.create_secret(Name=f"{secret_prefix(stack)}/client-keys", KmsKeyId=key_arn)["ARN"]
    if client_keys:
        sm.put_secret_value(SecretId=client_keys_arn, SecretString='{"version": 1, "clients": {}}')

    failover = cfg.cache.automatic_failover if cache_failover is None else cache_failover
    rg_id = synthesized.outputs["cacheReplicationGroupId"]
    c("elasticache").create_replication_group(
        ReplicationGroupId=rg_id, ReplicationGroupDescription="cache", Engine=cfg.cache.engine,
        CacheNodeType=cfg.cache.node_type, NumCacheClusters=cfg.cache.nodes,
        AutomaticFailoverEnabled=failover, MultiAZEnabled=failover and cfg.cache.multi_az,
        AtRestEncryptionEnabled=True, KmsKeyId=key_arn, TransitEncryptionEnabled=cache_tls,
        **({"AuthToken": "t" * 32} if cache_tls else {}))

    cw = c("cloudwatch")
    for alarm in synthesized.outputs["alarmNames"]:
        cw.put_metric_alarm(AlarmName=alarm, MetricName="M", Namespace="N", Statistic="Average",
                            Period=60, EvaluationPeriods=1, Threshold=1,
                            ComparisonOperator="GreaterThanThreshold")

    budget = synthesized.outputs["budgetName"]
    c("budgets").create_budget(AccountId=ACCOUNT, Budget={
        "BudgetName": budget, "TimeUnit": "MONTHLY", "BudgetType": "COST",
        "BudgetLimit": {"Amount": str(cfg.budget.monthly_limit_usd), "Unit": "USD"}})

    waf = c("wafv2")
    acl_arn = waf.create_web_acl(
        Name=name, Scope="REGIONAL", DefaultAction={"Allow": {}}, Rules=[],
        VisibilityConfig={"SampledRequestsEnabled": True, "CloudWatchMetricsEnabled": True,
                          "MetricName": name})["Summary"]["ARN"]
    waf.associate_web_acl(WebACLArn=acl_arn, ResourceArn=lb_arn)

    outputs = {
        **synthesized.outputs, "cacheAuthToken": "[secret]", "region": REGION,
        "albArn": lb_arn, "targetGroupArn": tg_arn, "kmsKeyArn": key_arn,
        "secretArns": secret_arns, "cacheAuthSecretArn": auth_arn, "webAclArn": acl_arn,
        "clientKeysSecretArn": client_keys_arn,
        "serviceUrl": health_url,
    }
    live = Live(stack, outputs, tmp_path / "outputs.json",
                {"lb": lb_arn, "tg": tg_arn, "targets": targets, "acl": acl_arn, "vpc": vpc})
    live.write()
    return live


@pytest.fixture
def ecs_runtime(mocker):
    """What a finished ECS rollout reports, set on moto's real describe_services answer.

    moto keeps runningCount 0 and rolloutState IN_PROGRESS and drops deploymentConfiguration;
    a test changes these keys to inject the runtime state it needs.
    """
    state = {"running": "desired", "rollout": "COMPLETED", "reason": "", "extra": [],
             "breaker": {"enable": True, "rollback": True}}

    def describe_services(real, **kw):
        answer = real(**kw)
        for svc in answer["services"]:
            running = svc["desiredCount"] if state["running"] == "desired" else state["running"]
            svc["runningCount"] = running
            svc["deployments"][0].update(rolloutState=state["rollout"], rolloutStateReason=state["reason"],
                                         runningCount=running)
            svc["deployments"] += state["extra"]
            svc["deploymentConfiguration"] = {"deploymentCircuitBreaker": state["breaker"]}
        return answer

    at_boundary(mocker, verify, "ecs", "describe_services", describe_services)
    return state


@pytest.fixture
def deploy(account, tmp_path, health_server, health, ecs_runtime):
    """`deploy(stack, synthesized, **variant)`: the account as `build` leaves it."""
    def run(stack, synthesized, **variant) -> Live:
        def make():
            built = build(stack, synthesized, tmp_path, health_server, **variant)
            return built.outputs, built.ids
        outputs, ids = account(("verify", stack, tuple(sorted(variant.items()))), make)
        live = Live(stack, outputs, tmp_path / "outputs.json", ids)
        live.write()
        return live
    return run


@pytest.fixture
def live(deploy, staging) -> Live:
    return deploy("staging", staging)


def run(live: Live, capsys, *extra):
    code = verify.main(["--stack", live.stack, "--outputs", str(live.path), *extra])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def failing(lines):
    return [line for line in lines if line.startswith("FAIL")]


# --- a healthy stack -------------------------------------------------------------------------

def test_a_healthy_staging_stack_passes_every_check(live, capsys):
    code, lines, err = run(live, capsys)
    assert code == 0, lines + [err]
    checks = [line.split(":")[0] for line in lines[:-1]]
    assert checks == ["PASS alb", "PASS targets", "PASS ecs", "PASS secret cache-auth-token",
                      "PASS secret client-keys", "PASS secret openai-api-key", "PASS cache",
                      "PASS alarms", "PASS budget", "PASS waf", "PASS health"]
    assert "PASS alb: staging-alb active, listeners HTTPS:443" in lines
    assert "PASS targets: 1 healthy (minimum 1)" in lines
    assert "PASS alarms: 17 present, none in ALARM (17 OK)" in lines
    assert "PASS budget: llm-service-staging present, 150 USD a month" in lines
    assert ("PASS cache: llm-service-staging available, TLS, at-rest encryption and AUTH on, "
            "failover off, multi-AZ off") in lines
    assert lines[-1] == "11 passed, 0 failed"


def test_a_healthy_prod_stack_passes_with_its_own_minimum_and_failover(deploy, prod, capsys):
    live = deploy("prod", prod)
    code, lines, _ = run(live, capsys)
    assert code == 0, lines
    assert "PASS targets: 3 healthy (minimum 3)" in lines
    assert ("PASS cache: llm-service-prod available, TLS, at-rest encryption and AUTH on, "
            "failover on, multi-AZ on") in lines


def test_iam_actions_lists_every_call_the_checks_make(live, capsys, mocker):
    # The deploy role's policy is checked against verify.IAM_ACTIONS (test_ci_roles.py); this
    # keeps that list honest by recording each AWS operation a full run makes.
    calls, make = set(), verify._client
    iam_names = {"monitoring": "cloudwatch", "budgets:DescribeBudget": "budgets:ViewBudget"}

    def record(model, **_):
        prefix = model.service_model.signing_name
        action = f"{iam_names.get(prefix, prefix)}:{model.name}"
        calls.add(iam_names.get(action, action))

    seen = []

    def client(service, region):
        c = make(service, region)
        c.meta.events.register("before-call", record, unique_id="iam-actions")  # once per client
        seen.append(c)
        return c

    # A secret that names the stack key by an alias: verify asks KMS which key that is.
    live.client("kms").create_alias(AliasName="alias/llm-service/staging", TargetKeyId=live.outputs["kmsKeyArn"])
    live.client("secretsmanager").update_secret(SecretId=live.outputs["secretArns"]["openai-api-key"],
                                                KmsKeyId="alias/llm-service/staging")
    mocker.patch("ops.verify._client", side_effect=client)
    try:
        code, lines, _ = run(live, capsys)
    finally:
        for c in seen:  # ops.boto keeps its clients for the next test
            c.meta.events.unregister("before-call", unique_id="iam-actions")
    assert code == 0, lines  # the alias resolves to the stack key
    assert calls == set(verify.IAM_ACTIONS)


def test_each_deploy_starts_from_the_state_the_api_calls_made(deploy, staging):
    """The snapshot harness itself: what one test changed is gone for the next."""
    first = deploy("staging", staging)
    elb, kms = first.client("elbv2"), first.client("kms")
    elb.deregister_targets(TargetGroupArn=first.ids["tg"], Targets=first.ids["targets"])
    kms.create_key(Description="made by an earlier test")
    first.client("cloudwatch").set_alarm_state(AlarmName="llm-service-staging-alb-5xx",
                                               StateValue="ALARM", StateReason="test")
    second = deploy("staging", staging)
    assert second.outputs == first.outputs
    assert len(elb.describe_target_health(TargetGroupArn=second.ids["tg"])["TargetHealthDescriptions"]) == 1
    assert [k["KeyArn"] for k in kms.list_keys()["Keys"]] == [second.outputs["kmsKeyArn"]]
    alarms = first.client("cloudwatch").describe_alarms(StateValue="ALARM")["MetricAlarms"]
    assert alarms == []


# --- one thing broken at a time --------------------------------------------------------------

def test_deregistered_targets_fail_the_target_check(live, capsys):
    live.client("elbv2").deregister_targets(TargetGroupArn=live.ids["tg"], Targets=live.ids["targets"])
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL targets: 0 healthy (minimum 1); no targets registered"]


def _health(states):
    """describe_target_health answering these (state, reason) pairs: moto's targets are always
    healthy, so a failing health check is injected at the boto3 boundary."""
    def answer(real, **kwargs):
        return {"TargetHealthDescriptions": [
            {"Target": {"Id": f"10.0.1.{i}", "Port": 8080},
             "TargetHealth": {"State": state, **({"Reason": reason} if reason else {})}}
            for i, (state, reason) in enumerate(states, start=10)]}
    return answer


def test_an_unhealthy_target_fails_the_check_and_is_named_with_its_reason(live, capsys, mocker):
    at_boundary(mocker, verify, "elbv2", "describe_target_health",
                _health([("unhealthy", "Target.FailedHealthChecks")]))
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == [
        "FAIL targets: 0 healthy (minimum 1); 10.0.1.10 unhealthy (Target.FailedHealthChecks)"]


def test_enough_healthy_targets_pass_and_the_others_are_still_named(live, capsys, mocker):
    at_boundary(mocker, verify, "elbv2", "describe_target_health",
                _health([("healthy", None), ("draining", "Target.DeregistrationInProgress"), ("initial", None)]))
    code, lines, _ = run(live, capsys)
    assert code == 0
    assert ("PASS targets: 1 healthy (minimum 1); 10.0.1.11 draining (Target.DeregistrationInProgress), "
            "10.0.1.12 initial") in lines


def test_prod_needs_three_healthy_targets(deploy, prod, capsys):
    live = deploy("prod", prod)
    live.client("elbv2").deregister_targets(TargetGroupArn=live.ids["tg"], Targets=live.ids["targets"][:1])
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL targets: 2 healthy (minimum 3)"]


def test_a_secret_without_a_value_fails_and_says_how_to_set_it(deploy, staging, capsys):
    live = deploy("staging", staging, secret_value=False)
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL secret openai-api-key: no current version; run "
                              "`python -m ops.apikey put --stack staging --name openai-api-key`"]


def test_client_keys_without_a_value_fail_and_say_how_to_add_one(deploy, staging, capsys):
    live = deploy("staging", staging, client_keys=False)
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL secret client-keys: no current version; run "
                              "`python -m ops.clientkeys add --stack staging <client>`"]


def test_a_secret_under_another_kms_key_fails(live, capsys):
    other = live.client("kms").create_key(Description="not the stack's")["KeyMetadata"]["Arn"]
    live.client("secretsmanager").update_secret(
        SecretId=live.outputs["secretArns"]["openai-api-key"], KmsKeyId=other)
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == [f"FAIL secret openai-api-key: encrypted with {other}, not the stack's key"]


def test_the_secret_value_is_never_read(live, capsys, mocker):
    at_boundary(mocker, verify, "secretsmanager", "get_secret_value",
                lambda real, **kw: pytest.fail("verify read a secret value"))
    code, lines, _ = run(live, capsys)
    assert code == 0, lines


def test_an_alarm_in_alarm_fails(live, capsys):
    live.client("cloudwatch").set_alarm_state(AlarmName="llm-service-staging-alb-5xx",
                                              StateValue="ALARM", StateReason="test")
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL alarms: in ALARM: llm-service-staging-alb-5xx"]


def test_a_missing_alarm_fails(live, capsys):
    live.client("cloudwatch").delete_alarms(AlarmNames=["llm-service-staging-cache-evictions"])
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL alarms: missing: llm-service-staging-cache-evictions"]


def test_waf_not_associated_fails(live, capsys):
    live.client("wafv2").disassociate_web_acl(ResourceArn=live.ids["lb"])
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL waf: no web ACL associated with the load balancer"]


def test_another_web_acl_on_the_load_balancer_fails(live, capsys):
    """Someone's ACL in place of the stack's: rules the stack never reviewed guard the service."""
    waf = live.client("wafv2")
    other = waf.create_web_acl(
        Name="someone-elses", Scope="REGIONAL", DefaultAction={"Allow": {}}, Rules=[],
        VisibilityConfig={"SampledRequestsEnabled": False, "CloudWatchMetricsEnabled": False,
                          "MetricName": "someone-elses"})["Summary"]["ARN"]
    waf.disassociate_web_acl(ResourceArn=live.ids["lb"])
    waf.associate_web_acl(WebACLArn=other, ResourceArn=live.ids["lb"])
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL waf: the load balancer has web ACL someone-elses, not the stack's"]


def test_redirect_mode_expects_the_http_listener_too():
    cfg = load(*with_changes("staging", loadBalancer__httpMode="redirect"))
    assert verify.Expect.from_config("staging", cfg).listeners == {("HTTPS", 443), ("HTTP", 80)}
    assert verify.Expect.from_config("staging", load(*with_changes("staging"))).listeners == {("HTTPS", 443)}


def test_an_unexpected_listener_fails(live, capsys):
    # Staging's httpMode is none: a plain HTTP listener would take API keys in clear.
    live.client("elbv2").create_listener(
        LoadBalancerArn=live.ids["lb"], Protocol="HTTP", Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": live.ids["tg"]}])
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL alb: listeners HTTP:80, HTTPS:443; expected HTTPS:443"]


def test_a_missing_budget_fails(live, capsys):
    live.client("budgets").delete_budget(AccountId=ACCOUNT, BudgetName="llm-service-staging")
    code, lines, _ = run(live, capsys)
    assert failing(lines) == [f"FAIL budget: llm-service-staging not found in account {ACCOUNT}"]


def test_a_budget_that_drifted_from_config_fails(live, capsys):
    # moto has no update_budget: delete and create it again with another limit.
    budgets = live.client("budgets")
    budgets.delete_budget(AccountId=ACCOUNT, BudgetName="llm-service-staging")
    budgets.create_budget(AccountId=ACCOUNT, Budget={
        "BudgetName": "llm-service-staging", "TimeUnit": "MONTHLY", "BudgetType": "COST",
        "BudgetLimit": {"Amount": "5000", "Unit": "USD"}})
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL budget: llm-service-staging limit 5000 USD; config says 150"]


def test_prod_cache_without_failover_fails(deploy, prod, capsys):
    live = deploy("prod", prod, cache_failover=False)
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL cache: llm-service-prod: automatic failover disabled, config wants "
                              "enabled; multi-AZ disabled, config wants enabled"]


def test_a_cache_without_tls_fails(deploy, staging, capsys):
    # moto accepts a group without transit encryption, as an older hand-made cluster would be.
    live = deploy("staging", staging, cache_tls=False)
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL cache: llm-service-staging: in-transit encryption off; AUTH token off"]


def test_a_second_deployment_in_progress_fails(live, capsys, ecs_runtime):
    # Injected: moto never shows two deployments (see the module docstring).
    ecs_runtime["rollout"] = "IN_PROGRESS"
    ecs_runtime["extra"] = [{"id": "ecs-svc/1", "status": "ACTIVE", "rolloutState": "COMPLETED"}]
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == ["FAIL ecs: 2 deployments (PRIMARY IN_PROGRESS, ACTIVE COMPLETED); "
                              "a rollout is not finished"]


def test_fewer_running_tasks_than_desired_fails(live, capsys, ecs_runtime):
    # Injected: the rollout is done, and moto's own runningCount (0) is kept.
    ecs_runtime["running"] = 0
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL ecs: running 0 of 1 tasks"]


def test_a_failed_rollout_fails_with_its_reason(live, capsys, ecs_runtime):
    # Injected: a rollout the circuit breaker stopped.
    ecs_runtime["rollout"], ecs_runtime["reason"] = "FAILED", "tasks failed to start"
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL ecs: deployment PRIMARY FAILED: tasks failed to start"]


def test_a_service_without_the_circuit_breaker_fails(live, capsys, ecs_runtime):
    # Injected: moto drops deploymentConfiguration from describe_services.
    ecs_runtime["breaker"] = {"enable": False, "rollback": False}
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL ecs: deployment circuit breaker with rollback is off; "
                              "a failed rollout would not roll back"]


def test_a_health_path_not_answering_200_fails(live, capsys, health, health_server):
    health.status = 503
    code, lines, _ = run(live, capsys)
    assert code == 1
    assert failing(lines) == [f"FAIL health: GET {health_server}/healthz (TLS name {CERT_NAME}) answered 503"]


def test_health_is_checked_against_the_certificate_name_at_the_alb_address(live, capsys, health_server):
    code, lines, _ = run(live, capsys)
    assert f"PASS health: GET {health_server}/healthz (TLS name {CERT_NAME}) answered 200" in lines


def test_a_service_url_that_is_not_http_fails_without_a_request(live, capsys):
    live.write(serviceUrl="file:///etc/passwd")
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL health: serviceUrl 'file:///etc/passwd' is not an http(s) URL"]


def test_an_untrusted_certificate_fails(live, capsys, self_signed_server):
    live.write(serviceUrl=self_signed_server)
    code, lines, _ = run(live, capsys)
    [line] = failing(lines)
    assert line.startswith(f"FAIL health: GET {self_signed_server}/healthz (TLS name {CERT_NAME}): "
                           "[SSL: CERTIFICATE_VERIFY_FAILED]")
    assert line.endswith("; the certificate does not match the load balancer's or is not trusted")


def test_a_certificate_for_another_name_fails(live, capsys, wrong_name_server):
    live.write(serviceUrl=wrong_name_server)
    code, lines, _ = run(live, capsys)
    [line] = failing(lines)
    assert "[SSL: CERTIFICATE_VERIFY_FAILED]" in line and "Hostname mismatch" in line, line


@pytest.mark.parametrize("host,names,expected", [
    ("api.acme.io", ["api.acme.io"], "api.acme.io"),          # serviceUrl is the domain
    ("api.acme.io", ["*.acme.io"], "api.acme.io"),            # a wildcard covers it
    ("alb-1.elb.amazonaws.com", ["api.acme.io"], "api.acme.io"),
    ("alb-1.elb.amazonaws.com", ["*.acme.io"], "verify.acme.io"),
    ("a.b.acme.io", ["*.acme.io"], "verify.acme.io"),          # a wildcard covers one label only
])
def test_the_tls_name_is_the_url_host_only_where_the_certificate_covers_it(host, names, expected):
    assert verify.tls_name_for(host, names) == expected


def test_access_denied_on_one_service_fails_that_check_only(live, capsys, mocker):
    # Injected: moto has no IAM enforcement by default.
    def deny(real, **kw):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}},
                          "GetWebACLForResource")

    at_boundary(mocker, verify, "wafv2", "get_web_acl_for_resource", deny)
    code, lines, _ = run(live, capsys)
    assert failing(lines) == ["FAIL waf: AccessDeniedException: not allowed"]
    assert lines[-1] == "10 passed, 1 failed"


# --- waiting ---------------------------------------------------------------------------------

class FakeTime:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_retries_until_the_targets_turn_healthy(live):
    elb = live.client("elbv2")
    elb.deregister_targets(TargetGroupArn=live.ids["tg"], Targets=live.ids["targets"])
    t, logged = FakeTime(), []

    def sleep(seconds):
        t.sleep(seconds)
        if len(t.sleeps) == 2:  # the new task registers after the second wait
            elb.register_targets(TargetGroupArn=live.ids["tg"], Targets=live.ids["targets"])

    results = verify.verify("staging", live.path, wait=300, sleep=sleep, clock=t.clock, log=logged.append)
    assert all(r.ok for r in results)
    assert t.sleeps == [verify.POLL_SECONDS, verify.POLL_SECONDS]
    assert logged[0] == "waiting: 1 failing (targets); next try in 15 s, 300 s left"


def test_wait_gives_up_at_the_limit_with_the_failing_lines(live):
    live.client("wafv2").disassociate_web_acl(ResourceArn=live.ids["lb"])
    t = FakeTime()
    results = verify.verify("staging", live.path, wait=40, sleep=t.sleep, clock=t.clock, log=lambda m: None)
    assert t.sleeps == [15, 15, 10]
    assert [r.line for r in results if not r.ok] == ["FAIL waf: no web ACL associated with the load balancer"]


# --- cannot check at all: one line, exit 2 ----------------------------------------------------

def test_missing_credentials_is_one_line(live, capsys, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found
    code, lines, err = run(live, capsys)
    assert code == 2
    assert lines == []
    assert err.splitlines() == ["error: no AWS credentials found: set AWS_PROFILE or assume the "
                                "stack's deploy role"]


def test_a_missing_output_is_one_line(live, capsys):
    outputs = dict(live.outputs)
    del outputs["webAclArn"]
    live.path.write_text(json.dumps(outputs))
    code, lines, err = run(live, capsys)
    assert code == 2
    assert err.splitlines() == [f"error: {live.path} has no output 'webAclArn'; run "
                                f"`pulumi stack output --json > {live.path}` after `pulumi up`"]


def test_an_unknown_stack_is_one_line(live, capsys):
    code = verify.main(["--stack", "qa", "--outputs", str(live.path)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and "qa" in err


def test_an_aws_error_fails_its_own_check_by_name_and_the_others_still_run(live, capsys, monkeypatch):
    """Each check AWS refuses fails alone, named, with AWS's words: one refusal stops no other check."""
    def refusing(service, region):
        fresh = boto3.client(service, region_name=region)  # not ops.boto's cached client: others use it
        if service != "sts":
            def deny(model, **_):
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not for this role"}}, model.name)
            fresh.meta.events.register("before-call.*.*", deny)
        return fresh

    monkeypatch.setattr(verify, "_client", refusing)
    code, lines, _ = run(live, capsys)
    assert code == 1
    secrets = [f"secret {name}" for name in ("cache-auth-token", "client-keys", "openai-api-key")]
    assert failing(lines) == [f"FAIL {name}: AccessDenied: not for this role" for name in
                              ("alb", "targets", "ecs", *secrets, "cache", "alarms", "budget", "waf", "health")]
    assert lines[-1] == "0 passed, 11 failed"
