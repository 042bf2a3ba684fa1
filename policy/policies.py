"""What no stack built from these components may declare: CrossGuard policies.

Each policy names the AWS Foundational Security Best Practices control it mirrors, where one
exists. They read the same camelCase input properties in `pulumi preview --policy-pack policy`
and in the offline plan (`offline/policy_check.py`). To add your own, append a
`ResourceValidationPolicy` to `POLICIES` (see docs/security.md, "Policies").
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

MANDATORY = EnforcementLevel.MANDATORY
TLS_POLICIES = re.compile(r"^ELBSecurityPolicy-TLS13-")
# A secret's name: one of these words as a whole part of the variable name (CACHE_AUTH_TOKEN,
# OPENAI_API_KEY), not inside another word (GATEWAY_OUTPUT_TOKENS_ESTIMATE).
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD)(_|$)", re.I)
KEY_VALUE = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")
WORLD = ("0.0.0.0/0", "::/0")


def _on(resource_type: str, check: Callable[[dict[str, Any], ReportViolation], None]):
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        if args.resource_type == resource_type:
            check(args.props, report)
    return validate


def _policy(name: str, control: str, description: str, resource_type: str, check) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=f"{description} ({control})" if control else description,
        enforcement_level=MANDATORY, validate=_on(resource_type, check),
    )


# --- encryption at rest -------------------------------------------------------------------------

def _cache_encrypted(p, report):
    if p.get("atRestEncryptionEnabled") is not True or not p.get("kmsKeyId"):
        report("the cache must be encrypted at rest with a customer-managed KMS key")
    if p.get("transitEncryptionEnabled") is not True:
        report("the cache must require encryption in transit")


def _secret_customer_key(p, report):
    if not p.get("kmsKeyId"):
        report("secrets must be encrypted with the stack's KMS key, not the AWS-managed key")


def _log_group(p, report):
    if not p.get("kmsKeyId"):
        report("log groups must be encrypted with a KMS key")
    if not p.get("retentionInDays"):
        report("log groups must set a retention period (they never expire by default)")


def _bucket_sse(p, report):
    for rule in p.get("rules") or []:
        algo = (rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm")
        if algo not in ("AES256", "aws:kms", "aws:kms:dsse"):
            report(f"bucket default encryption must be SSE-S3 or SSE-KMS, not {algo!r}")


def _topic_encrypted(p, report):
    if not p.get("kmsMasterKeyId"):
        report("SNS topics must be encrypted with a KMS key")


def _ecr(p, report):
    enc = (p.get("encryptionConfigurations") or [{}])[0]
    if enc.get("encryptionType") != "KMS":
        report("ECR repositories must be encrypted with KMS")
    if p.get("imageTagMutability") != "IMMUTABLE":
        report("ECR tags must be immutable, so a deployed tag always means the same image")
    if not (p.get("imageScanningConfiguration") or {}).get("scanOnPush"):
        report("ECR must scan images on push")


def _kms_rotation(p, report):
    if p.get("enableKeyRotation") is not True:
        report("KMS keys must rotate")


# --- encryption in transit ----------------------------------------------------------------------

def _listener(p, report):
    protocol = p.get("protocol")
    if protocol == "HTTPS" and not TLS_POLICIES.match(p.get("sslPolicy") or ""):
        report(f"HTTPS listeners need a TLS 1.3 policy, not {p.get('sslPolicy')!r}")
    if protocol == "HTTP":
        actions = p.get("defaultActions") or []
        redirects = all(a.get("type") == "redirect"
                        and (a.get("redirect") or {}).get("protocol") == "HTTPS" for a in actions)
        if not actions or not redirects:
            report("plain HTTP listeners may only redirect to HTTPS")


# --- network exposure ---------------------------------------------------------------------------

def _world_rule(rule: dict[str, Any]) -> bool:
    cidrs = [rule.get("cidrIpv4"), rule.get("cidrIpv6"), *(rule.get("cidrBlocks") or []),
             *(rule.get("ipv6CidrBlocks") or [])]
    return any(c in WORLD for c in cidrs)


def _open_port_ok(rule: dict[str, Any]) -> bool:
    return rule.get("fromPort") == rule.get("toPort") and rule.get("fromPort") in (80, 443)


def _ingress_rule(p, report):
    if _world_rule(p) and not _open_port_ok(p):
        report(f"ingress from anywhere is only for a load balancer's 80/443, not "
               f"{p.get('fromPort')}-{p.get('toPort')}")


def _security_group(p, report):
    for rule in p.get("ingress") or []:
        _ingress_rule(rule, report)


def _service_no_public_ip(p, report):
    if (p.get("networkConfiguration") or {}).get("assignPublicIp"):
        report("tasks must not get public IPs; put them in private subnets behind the load balancer")


# --- task definitions ---------------------------------------------------------------------------

def _task_definition(p, report):
    raw = p.get("containerDefinitions") or "[]"
    containers = json.loads(raw) if isinstance(raw, str) else raw
    for c in containers:
        name = c.get("name", "?")
        if c.get("privileged"):
            report(f"container {name} must not be privileged")
        if c.get("readonlyRootFilesystem") is not True:
            report(f"container {name} needs a read-only root file system")
        if str(c.get("user", "root")).split(":")[0] in ("root", "0", ""):
            report(f"container {name} must run as a non-root user")
        for env in c.get("environment") or []:
            if SECRET_NAME.search(env.get("name", "")) or KEY_VALUE.search(str(env.get("value", ""))):
                report(f"container {name}: {env.get('name')} looks like a secret in a plain "
                       "environment variable; use `secrets` with valueFrom")


# --- IAM ----------------------------------------------------------------------------------------

def _as_list(v):
    return v if isinstance(v, list) else [v]


def _no_admin(p, report):
    for key in ("policy", "assumeRolePolicy"):
        doc = p.get(key)
        if not doc:
            continue
        doc = json.loads(doc) if isinstance(doc, str) else doc
        for s in _as_list(doc.get("Statement", [])):
            if (s.get("Effect") == "Allow" and "*" in _as_list(s.get("Action", []))
                    and "*" in _as_list(s.get("Resource", []))):
                report("no IAM statement may allow every action on every resource")


# --- prod only ----------------------------------------------------------------------------------

def stack_name(resources) -> str:
    """Read from the URNs: urn:pulumi:<stack>::<project>::<type>::<name>."""
    for r in resources:
        if r.urn.startswith("urn:pulumi:"):
            return r.urn.split(":")[2]
    return ""


def is_prod(stack: str) -> bool:
    return stack == "prod" or stack.startswith("prod-") or stack.endswith("-prod")


def _prod_deletion_protection(args: StackValidationArgs, report: ReportViolation) -> None:
    # Its own policy so that the one `up` before a destroy (`teardown: true`) can disable it and
    # nothing else: `--policy-pack-config policy/teardown.json`.
    if not is_prod(stack_name(args.resources)):
        return
    for r in args.resources:
        if r.resource_type == "aws:lb/loadBalancer:LoadBalancer" and not r.props.get("enableDeletionProtection"):
            report("prod load balancers need deletion protection (ELB.6)", r.urn)


def _prod_invariants(args: StackValidationArgs, report: ReportViolation) -> None:
    if not is_prod(stack_name(args.resources)):
        return
    for r in args.resources:
        p = r.props
        if r.resource_type == "aws:elasticache/replicationGroup:ReplicationGroup":
            if not (p.get("multiAzEnabled") and p.get("automaticFailoverEnabled")):
                report("the prod cache needs multi-AZ with automatic failover (ElastiCache.3)", r.urn)
        if r.resource_type == "aws:ecs/service:Service":
            subnets = (p.get("networkConfiguration") or {}).get("subnets") or []
            if len(subnets) < 3:
                report(f"prod tasks must spread over at least 3 AZs, not {len(subnets)}", r.urn)


# --- names and text AWS accepts -----------------------------------------------------------------
# Mocks and moto accept any string; AWS refuses a name or description outside its character set or
# length, and the deploy stops at that resource. Each rule names the API reference it comes from.

@dataclass(frozen=True)
class Text:
    pattern: str  # what the whole value must match
    max_len: int
    source: str
    min_len: int = 1
    forbidden: tuple[str, ...] = ()  # prefixes or substrings AWS reserves


SG_TEXT = Text(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*", 255,
               "EC2 API, CreateSecurityGroup and SecurityGroupRule: description", min_len=0)
LB_NAME = Text(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?", 32,
               "ELBv2 API, CreateLoadBalancer / CreateTargetGroup: Name", forbidden=("internal-",))
ECS_NAME = Text(r"[a-zA-Z0-9_-]+", 255, "ECS API, CreateCluster / CreateService / RegisterTaskDefinition")
TEXT_RULES: dict[str, dict[str, Text]] = {
    "aws:ec2/securityGroup:SecurityGroup": {
        "description": SG_TEXT, "name": Text(SG_TEXT.pattern, 255, SG_TEXT.source, forbidden=("sg-",))},
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": {"description": SG_TEXT},
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": {"description": SG_TEXT},
    "aws:lb/loadBalancer:LoadBalancer": {"name": LB_NAME},
    "aws:lb/targetGroup:TargetGroup": {"name": LB_NAME},
    "aws:ecs/cluster:Cluster": {"name": ECS_NAME},
    "aws:ecs/service:Service": {"name": ECS_NAME},
    "aws:ecs/taskDefinition:TaskDefinition": {"family": ECS_NAME},
    "aws:ecr/repository:Repository": {"name": Text(
        r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*", 256,
        "ECR API, CreateRepository: repositoryName", min_len=2)},
    "aws:secretsmanager/secret:Secret": {
        "name": Text(r"[A-Za-z0-9/_+=.@-]+", 512, "Secrets Manager API, CreateSecret: Name"),
        "description": Text(r"[\s\S]*", 2048, "Secrets Manager API, CreateSecret: Description", min_len=0)},
    "aws:kms/key:Key": {"description": Text(r"[\s\S]*", 8192, "KMS API, CreateKey: Description", min_len=0)},
    "aws:kms/alias:Alias": {"name": Text(r"alias/[a-zA-Z0-9/_-]+", 256, "KMS API, CreateAlias: AliasName",
                                         forbidden=("alias/aws/",))},
    "aws:cloudwatch/logGroup:LogGroup": {"name": Text(r"[.\-_/#A-Za-z0-9]+", 512,
                                                      "CloudWatch Logs API, CreateLogGroup: logGroupName")},
    "aws:cloudwatch/metricAlarm:MetricAlarm": {
        "name": Text(r"[^\x00-\x1f\x7f]+", 255, "CloudWatch API, PutMetricAlarm: AlarmName"),
        "alarmDescription": Text(r"[\s\S]*", 1024, "CloudWatch API, PutMetricAlarm: AlarmDescription",
                                 min_len=0)},
    "aws:cloudwatch/dashboard:Dashboard": {"dashboardName": Text(
        r"[A-Za-z0-9_-]+", 255, "CloudWatch API, PutDashboard: DashboardName")},
    "aws:sns/topic:Topic": {"name": Text(r"[A-Za-z0-9_-]+", 256, "SNS API, CreateTopic: Name")},
    "aws:iam/role:Role": {
        "name": Text(r"[\w+=,.@-]+", 64, "IAM API, CreateRole: RoleName"),
        "path": Text(r"/|/[\x21-\x7e]+/", 512, "IAM API, CreateRole: Path")},
    "aws:elasticache/replicationGroup:ReplicationGroup": {"replicationGroupId": Text(
        r"[a-z](?:[a-z0-9]|-(?!-))*(?<!-)", 40,
        "ElastiCache API, CreateReplicationGroup: ReplicationGroupId (lower case, as AWS stores it)")},
    "aws:wafv2/webAcl:WebAcl": {
        "name": Text(r"[\w-]+", 128, "WAFV2 API, CreateWebACL: Name"),
        "visibilityConfig.metricName": Text(r"[\w#:.\-/]+", 255, "WAFV2 API, VisibilityConfig: MetricName"),
        "rules[].visibilityConfig.metricName": Text(r"[\w#:.\-/]+", 255,
                                                    "WAFV2 API, VisibilityConfig: MetricName"),
        "rules[].name": Text(r"[\w-]+", 128, "WAFV2 API, Rule: Name")},
    "aws:budgets/budget:Budget": {"name": Text(r"[^:\\]+", 100, "Budgets API, Budget: BudgetName",
                                               forbidden=("/action/",))},
    "aws:s3/bucket:Bucket": {"bucket": Text(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", 63,
                                            "S3 bucket naming rules", min_len=3)},
}
TAG_SOURCE = "Tagging AWS resources: tag keys up to 128 and values up to 256 Unicode letters, digits, " \
             "spaces and _ . : / = + - @; keys may not start with aws:"


def text_problem(value: str, rule: Text) -> Optional[str]:
    if not rule.min_len <= len(value) <= rule.max_len:
        return f"length {len(value)}, allowed {rule.min_len} to {rule.max_len}"
    if not re.fullmatch(rule.pattern, value):
        bad = sorted({c for c in value if not re.fullmatch(rule.pattern, c)} or {"(the order)"})
        return f"characters outside {rule.pattern}: {' '.join(repr(c) for c in bad)}"
    for word in rule.forbidden:
        if value.startswith(word) or (word.startswith("/") and word in value):
            return f"may not contain or start with {word!r}"
    return None


def _values_at(props: Any, path: str) -> list[Any]:
    """Values under a dotted path; `name[]` walks each element of a list."""
    found = [props]
    for part in path.split("."):
        step = []
        for node in found:
            if not isinstance(node, dict):
                continue
            value = node.get(part.removesuffix("[]"))
            if part.endswith("[]"):
                step.extend(value or [])
            elif value is not None:
                step.append(value)
        found = step
    return found


def _tag_text_ok(text: str) -> bool:
    # AWS's pattern [\p{L}\p{Z}\p{N}_.:/=+\-@]: separators (Z) are white space, a tab or a new line not.
    return all(unicodedata.category(c)[0] in ("L", "N", "Z") or c in "_.:/=+-@" for c in text)


def tag_problems(tags: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in tags.items():
        value = str(value)
        if not 1 <= len(key) <= 128 or not _tag_text_ok(key) or key.lower().startswith("aws:"):
            problems.append(f"tag key {key!r} is not a valid tag key ({TAG_SOURCE})")
        if len(value) > 256 or not _tag_text_ok(value):
            problems.append(f"tag {key}={value!r} is not a valid tag value ({TAG_SOURCE})")
    return problems


def _aws_text(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    for path, rule in TEXT_RULES.get(args.resource_type, {}).items():
        for value in _values_at(props, path):
            problem = text_problem(str(value), rule) if isinstance(value, str) else None
            if problem:
                report(f"{path} {value!r}: {problem} ({rule.source})")
    tags = props.get("tags")
    default_tags = props.get("defaultTags")
    if isinstance(default_tags, str):  # a provider's inputs arrive as JSON
        default_tags = json.loads(default_tags)
    for source in (tags, (default_tags or {}).get("tags")):
        if isinstance(source, dict):  # AWS tags; an image's `tags` is a list of references
            for problem in tag_problems(source):
                report(problem)


POLICIES = [
    _policy("cache-encrypted", "ElastiCache.4, ElastiCache.5",
            "caches are encrypted at rest with a customer key and in transit",
            "aws:elasticache/replicationGroup:ReplicationGroup", _cache_encrypted),
    _policy("secrets-customer-key", "", "secrets use a customer-managed KMS key",
            "aws:secretsmanager/secret:Secret", _secret_customer_key),
    _policy("log-groups-encrypted-retained", "CloudWatch.16",
            "log groups are KMS-encrypted and expire", "aws:cloudwatch/logGroup:LogGroup", _log_group),
    _policy("s3-default-encryption", "S3.17", "buckets encrypt by default",
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            _bucket_sse),
    _policy("sns-encrypted", "SNS.1", "topics are KMS-encrypted", "aws:sns/topic:Topic", _topic_encrypted),
    _policy("ecr-hardened", "ECR.1, ECR.2, ECR.5", "ECR: KMS, immutable tags, scan on push",
            "aws:ecr/repository:Repository", _ecr),
    _policy("kms-rotation", "KMS.4", "KMS keys rotate", "aws:kms/key:Key", _kms_rotation),
    _policy("https-tls13-and-http-redirect-only", "ELB.1",
            "HTTPS listeners use TLS 1.3 policies; HTTP only redirects", "aws:lb/listener:Listener", _listener),
    _policy("no-world-ingress-rule", "EC2.18, EC2.19", "only 80/443 may be open to the world",
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", _ingress_rule),
    _policy("no-world-ingress-inline", "EC2.18, EC2.19", "only 80/443 may be open to the world",
            "aws:ec2/securityGroup:SecurityGroup", _security_group),
    _policy("tasks-without-public-ip", "ECS.2", "ECS services assign no public IPs",
            "aws:ecs/service:Service", _service_no_public_ip),
    _policy("task-definition-hardened", "ECS.4, ECS.5, ECS.8",
            "containers: not privileged, read-only root, non-root, secrets by valueFrom",
            "aws:ecs/taskDefinition:TaskDefinition", _task_definition),
    _policy("iam-no-admin-role-policy", "IAM.1", "no Allow of * on *", "aws:iam/rolePolicy:RolePolicy", _no_admin),
    _policy("iam-no-admin-policy", "IAM.1", "no Allow of * on *", "aws:iam/policy:Policy", _no_admin),
    ResourceValidationPolicy(
        name="aws-names-and-text",
        description="names, descriptions and tags within the characters and lengths AWS accepts",
        enforcement_level=MANDATORY, validate=_aws_text,
    ),
    StackValidationPolicy(
        name="prod-availability",
        description="prod: multi-AZ cache with failover (ElastiCache.3), tasks over at least 3 AZs",
        enforcement_level=MANDATORY, validate=_prod_invariants,
    ),
    StackValidationPolicy(
        name="prod-alb-deletion-protection",
        description="prod: the load balancer has deletion protection (ELB.6), except in a teardown",
        enforcement_level=MANDATORY, validate=_prod_deletion_protection,
    ),
]
