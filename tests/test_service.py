"""The load-balanced, autoscaled service as each stack declares it."""

from __future__ import annotations

import json

import pytest

from infra.config import ConfigError, load
from ops.verify import Expect
from tests.conftest import config_of, container, policy, with_changes

SG = "aws:ec2/securityGroup:SecurityGroup"
IN = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
OUT = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
LISTENER = "aws:lb/listener:Listener"
SVC = "aws:ecs/service:Service"



def _verify_expects_what_is_declared(s, cfg):
    """`ops.verify` checks the live listeners against these; they must be what the stack declares."""
    declared = {(r.inputs["protocol"], r.inputs["port"]) for r in s.of_type(LISTENER)}
    assert Expect.from_config(s.stack, cfg).listeners == declared


def _rules(stack, typ, sg_name):
    return [r for r in stack.of_type(typ) if r.inputs["securityGroupId"] == f"{sg_name}-id"]


def test_alb_accepts_443_only_from_configured_cidrs(stack):
    rules = _rules(stack, IN, "alb-sg")
    assert {(r.inputs["fromPort"], r.inputs["toPort"]) for r in rules} == {(443, 443)}
    assert {r.inputs.get("cidrIpv4") for r in rules} - {None} == {"0.0.0.0/0"}
    assert {r.inputs.get("cidrIpv6") for r in rules} - {None} == {"::/0"}


def test_the_alb_group_and_its_ingress_rules_whole(stack):
    """One rule per listener port and CIDR, each saying what it admits (the console shows only the
    descriptions), in the stack's VPC."""
    group = stack.one("aws:ec2/securityGroup:SecurityGroup", "alb-sg")
    assert (group.inputs["vpcId"], group.inputs["description"]) == (
        stack.outputs["vpcId"], "Load balancer: listener ports only")
    rules = {r.name: r.inputs for r in _rules(stack, IN, "alb-sg")}
    assert rules == {
        "alb-in-443-v4-0": {"securityGroupId": "alb-sg-id", "cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp",
                            "fromPort": 443, "toPort": 443, "description": "clients on 443"},
        "alb-in-443-v6-0": {"securityGroupId": "alb-sg-id", "cidrIpv6": "::/0", "ipProtocol": "tcp",
                            "fromPort": 443, "toPort": 443, "description": "clients on 443 (IPv6)"}}


def test_alb_egress_goes_only_to_the_tasks_on_the_container_port(stack):
    (rule,) = _rules(stack, OUT, "alb-sg")
    port = config_of(stack).service.container_port
    assert rule.inputs["referencedSecurityGroupId"] == "service-sg-id"
    assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (port, port)


def test_tasks_admit_only_the_load_balancer(stack):
    (rule,) = _rules(stack, IN, "service-sg")
    assert rule.inputs["referencedSecurityGroupId"] == "alb-sg-id"
    assert "cidrIpv4" not in rule.inputs and "cidrIpv6" not in rule.inputs
    assert rule.inputs["fromPort"] == config_of(stack).service.container_port


def test_no_group_but_the_load_balancer_is_open_to_the_world(stack):
    open_rules = [r for r in stack.of_type(IN)
                  if r.inputs.get("cidrIpv4") == "0.0.0.0/0" or r.inputs.get("cidrIpv6") == "::/0"]
    assert {r.inputs["securityGroupId"] for r in open_rules} == {"alb-sg-id"}
    # Exactly the HTTPS listener port, one port per rule.
    assert all(r.inputs["fromPort"] == r.inputs["toPort"] for r in open_rules)
    assert {r.inputs["fromPort"] for r in open_rules} == {443}


def test_task_egress_is_https_and_the_cache(stack):
    rules = _rules(stack, OUT, "service-sg")
    assert sorted((r.inputs["fromPort"], r.inputs.get("cidrIpv4"),
                   r.inputs.get("referencedSecurityGroupId")) for r in rules) == [
        (443, "0.0.0.0/0", None), (6379, None, "cache-sg-id")]


def test_https_listener_only_by_default(stack):
    (listener,) = stack.of_type(LISTENER)
    assert listener.inputs["port"] == 443 and listener.inputs["protocol"] == "HTTPS"
    assert listener.inputs["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert listener.inputs["certificateArn"] == config_of(stack).load_balancer.certificate_arn
    assert listener.inputs["defaultActions"][0]["targetGroupArn"] == stack.outputs["targetGroupArn"]
    assert stack.outputs["serviceUrl"].startswith("https://")
    _verify_expects_what_is_declared(stack, config_of(stack))


def test_redirect_mode_adds_port_80_as_a_301_only(synth):
    s = synth("prod", loadBalancer__httpMode="redirect")
    _verify_expects_what_is_declared(s, load(*with_changes("prod", loadBalancer__httpMode="redirect")))
    http = s.one(LISTENER, "alb-http")
    (action,) = http.inputs["defaultActions"]
    assert action["type"] == "redirect"
    assert action["redirect"]["protocol"] == "HTTPS" and action["redirect"]["statusCode"] == "HTTP_301"
    assert {r.inputs["fromPort"] for r in _rules(s, IN, "alb-sg")} == {80, 443}


def test_acm_certificate_with_dns_validation(synth):
    s = synth("staging", loadBalancer__certificateArn="", loadBalancer__domainName="api.example.com",
              loadBalancer__hostedZoneId="Z0123456789ABC")
    cert = s.one("aws:acm/certificate:Certificate")
    assert cert.inputs["validationMethod"] == "DNS" and cert.inputs["domainName"] == "api.example.com"
    validation = s.one("aws:acm/certificateValidation:CertificateValidation")
    record = s.one("aws:route53/record:Record", "alb-cert-validation")
    assert record.inputs["zoneId"] == "Z0123456789ABC" and record.inputs["type"] == "CNAME"
    # Overwrite: a re-created stack takes over the record its predecessor left (ACM's names are
    # the same for the same domain and account).
    assert (record.inputs["ttl"], record.inputs["allowOverwrite"]) == (300, True)
    assert validation.inputs["validationRecordFqdns"] == [record.inputs["name"].rstrip(".")]
    # The ARN is the validated certificate's (that it is read from the validation's output, which
    # makes the listener wait for issuance, is by construction; mocked values cannot show order).
    (listener,) = s.of_type(LISTENER)
    assert listener.inputs["certificateArn"] == validation.inputs["certificateArn"] == \
        "arn:aws:acm:us-east-1:123456789012:certificate/alb-cert"
    alias = s.one("aws:route53/record:Record", "alb-alias")
    assert alias.inputs == {"zoneId": "Z0123456789ABC", "name": "api.example.com", "type": "A", "aliases": [{
        "name": "alb-lb-0a1b2c3-1234567890.us-east-1.elb.amazonaws.com", "zoneId": "Z35SXDOTRQ7X7K",
        "evaluateTargetHealth": True}]}, "the ALB's own name and zone, as the mocks answer them"
    assert s.outputs["serviceUrl"] == "https://api.example.com"


def test_alb_attributes_suit_streamed_responses(stack):
    lb = stack.one("aws:lb/loadBalancer:LoadBalancer")
    cfg = config_of(stack)
    assert lb.inputs["idleTimeout"] == cfg.load_balancer.idle_timeout_seconds >= 300
    assert lb.inputs["dropInvalidHeaderFields"] is True
    assert lb.inputs["enableHttp2"] is True
    assert lb.inputs["enableDeletionProtection"] is (stack.stack == "prod")
    assert lb.inputs["internal"] is False
    assert lb.inputs["ipAddressType"] == "ipv4", "the VPC has no IPv6 CIDR for dualstack"
    assert lb.inputs["subnets"] == stack.outputs["publicSubnetIds"]
    # The stack's one bucket (named by the provider; the mocks answer with its logical name).
    assert stack.one("aws:s3/bucket:Bucket").name == "alb-logs"
    assert lb.inputs["accessLogs"] == {"bucket": "alb-logs", "prefix": "alb", "enabled": True}
    # CreateLoadBalancer checks that ELB may write the logs: it waits for the bucket's policy.
    assert lb.depends_on == ["alb-logs"]
    assert lb.inputs["loadBalancerType"] == "application"
    assert lb.inputs["desyncMitigationMode"] == "defensive"
    assert lb.inputs["securityGroups"] == ["alb-sg-id"]


def test_access_logs_are_versioned_and_old_versions_expire(stack):
    versioning = stack.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    life = stack.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    days = config_of(stack).load_balancer.access_log_retention_days
    everything = {"prefix": ""}
    assert life.inputs["rules"] == [
        {"id": "expire-access-logs", "status": "Enabled", "filter": everything, "expiration": {"days": days},
         "noncurrentVersionExpiration": {"noncurrentDays": days},
         # An upload ELB abandoned part way would otherwise be kept (and billed) for ever.
         "abortIncompleteMultipartUpload": {"daysAfterInitiation": 7}},
        {"id": "remove-expired-delete-markers", "status": "Enabled", "filter": everything,
         "expiration": {"expiredObjectDeleteMarker": True}}]
    assert "alb-logs" in life.depends_on, "noncurrent rules need versioning on first"


def test_access_log_bucket_is_sse_s3_private_expiring_and_writable_by_elb(stack):
    sse = stack.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    rule = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] == "AES256", "ALB log delivery cannot write to SSE-KMS buckets"
    block = stack.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy",
                                         "ignorePublicAcls", "restrictPublicBuckets"))
    life = stack.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert life.inputs["rules"][0]["expiration"]["days"] == \
        config_of(stack).load_balancer.access_log_retention_days
    statements = policy(stack.one("aws:s3/bucketPolicy:BucketPolicy"))["Statement"]
    principals = [s["Principal"] for s in statements if s["Effect"] == "Allow"]
    # us-east-1 opened before August 2022: its legacy ELB account, and the service principal.
    assert principals == [{"AWS": "arn:aws:iam::127311923021:root"},
                          {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}]


def test_a_region_opened_since_august_2022_gets_the_log_delivery_principal_alone():
    """No legacy ELB account exists there (the provider's aws_elb_service_account fails with
    "unsupported AWS Region"): the policy neither asks for one nor grants a made-up one."""
    from components.load_balancer import access_log_policy
    statements = json.loads(access_log_policy("arn:aws:s3:::alb-logs", "ap-southeast-7"))["Statement"]
    writes = [x for x in statements if x["Effect"] == "Allow"]
    assert [x["Principal"] for x in writes] == [{"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}]
    assert all(x["Resource"] == "arn:aws:s3:::alb-logs/alb/AWSLogs/*" for x in writes)
    govcloud = json.loads(access_log_policy("arn:aws-us-gov:s3:::logs", "us-gov-west-1"))["Statement"]
    assert govcloud[0]["Principal"] == {"AWS": "arn:aws-us-gov:iam::048591011584:root"}
    # Whole, in a Region with a legacy account: both writers to the log prefix only, TLS only.
    target = "arn:aws:s3:::alb-logs/alb/AWSLogs/*"
    assert json.loads(access_log_policy("arn:aws:s3:::alb-logs", "us-east-1")) == {
        "Version": "2012-10-17", "Statement": [
            {"Sid": "RegionalElbAccountWritesLogs", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::127311923021:root"}, "Action": "s3:PutObject", "Resource": target},
            {"Sid": "LogDeliveryServiceWritesLogs", "Effect": "Allow",
             "Principal": {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}, "Action": "s3:PutObject",
             "Resource": target},
            {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": ["arn:aws:s3:::alb-logs", "arn:aws:s3:::alb-logs/*"],
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}
    china = json.loads(access_log_policy("arn:aws-cn:s3:::logs", "cn-north-1"))["Statement"]
    assert china[0]["Principal"] == {"AWS": "arn:aws-cn:iam::638102146993:root"}


def test_target_group_health_check_and_routing(stack):
    tg = stack.one("aws:lb/targetGroup:TargetGroup")
    cfg = config_of(stack)
    assert tg.inputs["targetType"] == "ip"
    assert tg.inputs["loadBalancingAlgorithmType"] == "least_outstanding_requests"
    assert tg.inputs["healthCheck"]["path"] == cfg.load_balancer.health_check_path == "/healthz"
    assert tg.inputs["deregistrationDelay"] == cfg.load_balancer.deregistration_delay_seconds
    assert tg.inputs["port"] == cfg.service.container_port
    assert (tg.inputs["protocol"], tg.inputs["protocolVersion"], tg.inputs["vpcId"]) == (
        "HTTP", "HTTP1", "network-vpc-id")
    # The checks the gateway's drain is timed against (GATEWAY_DRAIN_QUIET_SECONDS is an interval
    # and a timeout): out of rotation after 3 failures 15 s apart, back after 2 successes.
    assert tg.inputs["healthCheck"] == {"enabled": True, "path": "/healthz", "protocol": "HTTP", "matcher": "200",
                                        "interval": 15, "timeout": 5, "healthyThreshold": 2,
                                        "unhealthyThreshold": 3}
    assert {"name": "GATEWAY_DRAIN_QUIET_SECONDS", "value": "20"} in container(stack)["environment"]
    (https,) = [listener for listener in stack.of_type(LISTENER) if listener.inputs["port"] == 443]
    assert https.inputs["defaultActions"] == [{
        "type": "forward", "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                                             "targetgroup/alb-tg-0a1b2c3/fedcba9876543210"}]


def test_task_size_and_container_hardening(stack):
    task = stack.one("aws:ecs/taskDefinition:TaskDefinition")
    cfg = config_of(stack)
    assert (int(task.inputs["cpu"]), int(task.inputs["memory"])) == (cfg.service.cpu, cfg.service.memory)
    assert task.inputs["runtimePlatform"]["cpuArchitecture"] == cfg.service.architecture
    app = container(stack)
    assert app["readonlyRootFilesystem"] is True and app["privileged"] is False
    assert app["user"] not in ("root", "0", "0:0")
    # The gateway's own check with the image's interpreter: no curl, no shell needed.
    assert app["healthCheck"]["command"] == ["CMD", "python", "-m", "gateway.healthcheck"]
    assert app["stopTimeout"] == cfg.service.stop_timeout_seconds
    assert app["logConfiguration"]["options"]["awslogs-group"] == stack.outputs["logGroupName"]


def test_container_env_has_cache_endpoint_and_secrets_by_arn_only(stack):
    app = container(stack)
    env = {e["name"]: e["value"] for e in app["environment"]}
    assert env["CACHE_HOST"] == stack.outputs["cachePrimaryEndpoint"]
    assert env["CACHE_PORT"] == "6379" and env["CACHE_TLS"] == "true"
    assert env["APP_ENV"] == stack.stack
    assert not any("://" in v and "@" in v for v in env.values()), "no password in any URL"
    secrets = {s["name"]: s["valueFrom"] for s in app["secrets"]}
    assert secrets == {
        "OPENAI_API_KEY": stack.outputs["secretArns"]["openai-api-key"],
        "CLIENT_KEYS": stack.outputs["clientKeysSecretArn"],
        "CACHE_AUTH_TOKEN": stack.outputs["cacheAuthSecretArn"],
    }
    assert "mock-generated-password" not in json.dumps(app)


def test_service_runs_private_with_rollback(stack):
    svc = stack.one(SVC)
    net = svc.inputs["networkConfiguration"]
    assert net["assignPublicIp"] is False
    assert net["subnets"] == stack.outputs["privateSubnetIds"]
    assert svc.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert svc.inputs["deploymentMinimumHealthyPercent"] == 100
    assert svc.inputs["deploymentMaximumPercent"] == 200
    assert svc.inputs["healthCheckGracePeriodSeconds"] > 0
    assert svc.inputs["enableExecuteCommand"] is (stack.stack != "prod")
    assert svc.inputs["loadBalancers"][0]["targetGroupArn"] == stack.outputs["targetGroupArn"]


def test_capacity_providers_staging_spot_prod_on_demand_both_graviton(staging, prod):
    strat = lambda s: {x["capacityProvider"]: x for x in s.one(SVC).inputs["capacityProviderStrategies"]}  # noqa: E731
    arch = lambda s: s.one("aws:ecs/taskDefinition:TaskDefinition").inputs["runtimePlatform"]["cpuArchitecture"]  # noqa: E731
    assert strat(staging)["FARGATE_SPOT"]["weight"] >= 1 and arch(staging) == "ARM64"
    assert set(strat(prod)) == {"FARGATE"} and strat(prod)["FARGATE"]["base"] >= 3
    assert arch(prod) == "ARM64"
    assert staging.one(SVC).inputs["platformVersion"] == "LATEST"  # Spot on ARM64 needs 1.4.0+


def test_the_document_that_allows_spot_on_arm64():
    """infra/config/ has no Spot/ARM64 rule because the ECS API reference allows it; if a
    botocore update drops this sentence, the decision must be read again."""
    import botocore.session
    model = botocore.session.get_session().get_service_model("ecs")
    doc = model.shape_for("CapacityProviderStrategyItem").documentation
    assert "supports Linux tasks with the ARM64 architecture on platform version 1.4.0 or later" in doc


def test_service_waits_for_the_capacity_providers(stack):
    assert "service-capacity" in stack.one(SVC).depends_on
    cap = stack.one("aws:ecs/clusterCapacityProviders:ClusterCapacityProviders")
    assert set(cap.inputs["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}


def test_service_is_created_after_what_its_first_tasks_need(stack):
    """On a real create: the target group must belong to a load balancer (through the HTTPS
    listener) before the service registers with it, and the tasks must be allowed to read their
    secrets and find a value in each one the stack writes (the cache token)."""
    deps = stack.one(SVC).depends_on
    assert {"alb-https", "service-execution-secrets", "secrets-cache-auth-token-value"} <= set(deps)
    listener = stack.one(LISTENER, "alb-https")
    assert listener.inputs["defaultActions"][0]["targetGroupArn"] == stack.one(SVC).inputs[
        "loadBalancers"][0]["targetGroupArn"]


def test_in_pulumi_mode_the_service_also_waits_for_the_api_key_value(synth):
    raw, keys = with_changes("staging", secrets__source="pulumi")
    raw["llm-service:openai-api-key"] = "sk-proj-" + "x" * 40
    s = synth("staging", raw=raw, secret_keys=keys | {"llm-service:openai-api-key"})
    assert "secrets-openai-api-key-value" in s.one(SVC).depends_on


def test_a_changed_capacity_strategy_applies_on_a_second_up(stack):
    # The provider updates capacity_provider_strategies only with force_new_deployment.
    assert stack.one(SVC).inputs["forceNewDeployment"] is True


def test_ecs_exec_gets_writable_agent_paths_and_only_where_it_is_on(staging, prod):
    """The SSM agent crashes on a read-only root unless these paths are writable volumes."""
    exec_paths = {"/managed-agents", "/var/lib/amazon/ssm", "/var/log/amazon/ssm"}
    for s, on in ((staging, True), (prod, False)):
        app = container(s)
        mounts = {m["containerPath"]: m for m in app["mountPoints"]}
        assert app["readonlyRootFilesystem"] is True
        assert all(m["readOnly"] is False for m in mounts.values())
        volumes = {v["name"] for v in s.one("aws:ecs/taskDefinition:TaskDefinition").inputs["volumes"]}
        assert {m["sourceVolume"] for m in mounts.values()} == volumes
        assert (exec_paths <= set(mounts)) is on and (exec_paths & set(mounts) == set()) is (not on)
        assert "/tmp" in mounts
        assert s.one(SVC).inputs["enableExecuteCommand"] is on


def test_health_check_command_from_config(synth):
    s = synth("staging", service__healthCheckCommand="python -c 'import urllib.request as u; "
              "u.urlopen(\"http://localhost:8080/healthz\")'")
    assert container(s)["healthCheck"]["command"][1].startswith("python -c")


def test_scaling_bounds_and_three_signals(stack):
    cfg = config_of(stack).service
    target = stack.one("aws:appautoscaling/target:Target")
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (cfg.min_tasks, cfg.max_tasks)
    assert target.inputs["resourceId"] == f"service/llm-service-{stack.stack}/llm-service-{stack.stack}"
    policies = {p.name: p.inputs["targetTrackingScalingPolicyConfiguration"]
                for p in stack.of_type("aws:appautoscaling/policy:Policy")}
    metrics = {c["predefinedMetricSpecification"]["predefinedMetricType"]: c for c in policies.values()}
    assert set(metrics) == {"ECSServiceAverageCPUUtilization", "ECSServiceAverageMemoryUtilization",
                            "ALBRequestCountPerTarget"}
    label = metrics["ALBRequestCountPerTarget"]["predefinedMetricSpecification"]["resourceLabel"]
    lb = stack.one("aws:lb/loadBalancer:LoadBalancer")
    assert label.startswith("app/") and "/targetgroup/" in label and lb.name in label
    for c in metrics.values():
        assert c["scaleOutCooldown"] < c["scaleInCooldown"]


def test_autoscaling_owns_desired_count(stack):
    svc = stack.one(SVC)
    assert svc.ignore_changes == ["desired_count"]
    assert svc.inputs["desiredCount"] == config_of(stack).service.min_tasks


def test_without_autoscaling_config_owns_desired_count(synth):
    s = synth("staging", service__autoscaling=False, service__desiredTasks=2)
    svc = s.one(SVC)
    assert svc.ignore_changes == []
    assert svc.inputs["desiredCount"] == 2
    assert s.of_type("aws:appautoscaling/target:Target") == []


def test_prod_is_bigger_than_staging(staging, prod):
    task = lambda s: s.one("aws:ecs/taskDefinition:TaskDefinition").inputs  # noqa: E731
    cap = lambda s: s.one("aws:appautoscaling/target:Target").inputs  # noqa: E731
    assert int(task(prod)["cpu"]) > int(task(staging)["cpu"])
    assert int(task(prod)["memory"]) > int(task(staging)["memory"])
    assert cap(prod)["maxCapacity"] > cap(staging)["maxCapacity"]
    assert cap(prod)["minCapacity"] > cap(staging)["minCapacity"]
    assert len(prod.outputs["privateSubnetIds"]) > len(staging.outputs["privateSubnetIds"])


def test_ecr_repository_is_immutable_scanned_encrypted(stack):
    repo = stack.one("aws:ecr/repository:Repository")
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
    assert repo.inputs["imageScanningConfiguration"]["scanOnPush"] is True
    assert repo.inputs["encryptionConfigurations"][0] == {
        "encryptionType": "KMS", "kmsKey": stack.outputs["kmsKeyArn"]}
    lifecycle = stack.one("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle.inputs["repository"] == f"llm-service-{stack.stack}"
    assert json.loads(lifecycle.inputs["policy"]) == {"rules": [
        {"rulePriority": 1, "description": "drop untagged images after 7 days",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                       "countNumber": 7}, "action": {"type": "expire"}},
        {"rulePriority": 2, "description": "keep the newest 50 images",
         "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 50},
         "action": {"type": "expire"}}]}


def test_execution_role_scoped_to_own_log_group_and_repository(stack):
    pol = policy(stack.one("aws:iam/rolePolicy:RolePolicy", "service-execution-runtime"))
    by_sid = {s["Sid"]: s for s in pol["Statement"]}
    assert by_sid["WriteOwnLogs"]["Resource"].startswith(
        f"arn:aws:logs:us-east-1:123456789012:log-group:/ecs/llm-service-{stack.stack}:")
    # The ARN the stack's own repository resource (registry-repo) answers with.
    assert by_sid["PullOwnImages"]["Resource"] == "arn:aws:ecr:us-east-1:123456789012:repository/registry-repo"


def test_task_log_group_is_encrypted_with_retention(stack):
    group = stack.one("aws:cloudwatch/logGroup:LogGroup", "service-logs")
    assert group.inputs["kmsKeyId"] == stack.outputs["kmsKeyArn"]
    assert group.inputs["retentionInDays"] == config_of(stack).service.log_retention_days


def test_container_insights_is_enabled_by_default_and_enhanced_when_a_stack_says_so(synth, stack):
    def insights(s):
        return s.one("aws:ecs/cluster:Cluster").inputs["settings"]

    assert insights(stack) == [{"name": "containerInsights", "value": "enabled"}]
    raw, keys = with_changes("staging", service__containerInsights="enhanced")
    enhanced = synth("staging", raw=raw, secret_keys=keys)
    assert insights(enhanced) == [{"name": "containerInsights", "value": "enhanced"}]
    # Off is refused: the alarms read Container Insights' task count.
    with pytest.raises(ConfigError, match=r"service.containerInsights: got 'disabled'"):
        load(*with_changes("staging", service__containerInsights="disabled"))


def test_every_resource_is_its_components_child_in_every_mode(stack, synth):
    """A child declared without its parent gets another URN (a replacement on the next `up`) and
    leaves the component's provider and protection: every resource but the stack's provider and
    the program's own two random values is a child of its component, whichever parts a stack turns
    on (an HTTP redirect, a certificate the stack requests and validates)."""
    own = {("pulumi:providers:aws", "aws"), ("random:index/randomPassword:RandomPassword", "cache-auth-token"),
           ("random:index/randomId:RandomId", "cache-final-snapshot")}
    variant = synth("staging", loadBalancer__httpMode="redirect", loadBalancer__certificateArn="",
                    loadBalancer__domainName="api.example.com", loadBalancer__hostedZoneId="Z0123456789ABC")
    for s in (stack, variant):
        assert {(r.type, r.name) for r in s.resources if r.custom and r.parent is None} == own
    lb = ("llm-service:load_balancer:LoadBalancer", "alb")
    assert {r.name for r in variant.resources if r.parent == lb} == {
        "alb-sg", "alb-in-443-v4-0", "alb-in-443-v6-0", "alb-in-80-v4-0", "alb-in-80-v6-0", "alb-logs", "alb-lb",
        "alb-tg", "alb-https", "alb-http", "alb-alias", "alb-cert", "alb-cert-validation"}
