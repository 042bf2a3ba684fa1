"""Rate limiting and threat filtering at the edge: a regional WAFv2 web ACL on the load balancer.

Creates: a web ACL with a per-client-IP rate-based rule (answering 429 in OpenAI's error shape)
and the AWS managed rule groups for common threats, known bad inputs and IP reputation, whose
rules on request bodies (prompts) only count; its association with the ALB; logging to an encrypted
`aws-waf-logs-*` log group with the Authorization header redacted (it carries clients' keys).

Cost: $5/month per ACL, $1/month per rule or managed group (4 here), $0.60 per million requests;
logs $0.50/GB ingested.

Args (`EdgeArgs`, each described where it is declared below):
    name: str, required
    load_balancer_arn: pulumi.Input[str], required
    rate_limit: int = 300
    rate_window_seconds: int = 300
    log_retention_days: int = 30
    kms_key_arn: Optional[pulumi.Input[str]] = None

Outputs: web_acl_arn, web_acl_name.

Example (examples/edge/, runs as written beside a copy of this file):

    import pulumi
    from edge import Edge, EdgeArgs

    waf = Edge("edge", EdgeArgs(
        name="my-app",
        load_balancer_arn="arn:aws:elasticloadbalancing:eu-west-1:111122223333:loadbalancer/app/my-alb/0123456789abcdef"))
    pulumi.export("webAclArn", waf.web_acl_arn)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

MANAGED_GROUPS = (
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesAmazonIpReputationList",
)
# The body of every request this service takes is a prompt: text a model reads, relayed as JSON
# and never rendered, run, fetched or opened by the service. The managed rules that inspect
# bodies would refuse ordinary prompts (over 8 KB, quoting HTML, a path with ../, the metadata
# address 169.254.169.254, a ${jndi: string under discussion) with a bare 403 the SDKs cannot
# read, so they only count (their metrics and labels stay). Every rule on URIs, query strings,
# headers and cookies still blocks: an API client never sends such input there. The gateway
# enforces its own body size limit.
COUNT_ONLY = {
    "AWSManagedRulesCommonRuleSet": ["SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY",
                                     "GenericRFI_BODY", "EC2MetaDataSSRF_BODY"],
    "AWSManagedRulesKnownBadInputsRuleSet": ["Log4JRCE_BODY", "JavaDeserializationRCE_BODY"],
}
# What a client over the rate limit reads: OpenAI's error shape and status, so SDKs back off.
RATE_LIMITED_BODY = "rate-limited"
RATE_LIMITED = json.dumps({"error": {
    "message": "Too many requests from this address; slow down and retry later.",
    "type": "requests", "param": None, "code": "rate_limit_exceeded"}})


def problems(a: EdgeArgs) -> list[tuple[str, str]]:
    """What WAF would refuse in these arguments, as (argument, why)."""
    found = []
    if not 10 <= a.rate_limit <= 2_000_000_000:
        found.append(("rate_limit", "WAF rate-based rules take 10 to 2,000,000,000 requests"))
    if a.rate_window_seconds not in (60, 120, 300, 600):
        found.append(("rate_window_seconds", "WAF evaluates 60, 120, 300 or 600 seconds"))
    return found


@dataclass
class EdgeArgs:
    name: str
    """ACL and log group name suffix, e.g. llm-service-staging."""
    load_balancer_arn: pulumi.Input[str]
    """The ALB the web ACL is associated with."""
    rate_limit: int = 300
    """Requests per client IP per window before WAF blocks it."""
    rate_window_seconds: int = 300
    """The rate-based rule's window in seconds."""
    log_retention_days: int = 30
    """Days WAF logs are kept."""
    kms_key_arn: Optional[pulumi.Input[str]] = None
    """The KMS key that encrypts the WAF log group; None leaves it to CloudWatch's own encryption."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"EdgeArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


def _visibility(metric: str) -> dict[str, Any]:
    return dict(cloudwatch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True)


class Edge(pulumi.ComponentResource):
    web_acl_arn: pulumi.Output[str]
    """The web ACL's ARN."""
    web_acl_name: pulumi.Output[str]
    """The web ACL's name (the WAF metrics' WebACL dimension)."""

    def __init__(self, name: str, args: EdgeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:edge:Edge", name, None, opts)
        p = pulumi.ResourceOptions(parent=self)
        rules = [aws.wafv2.WebAclRuleArgs(
            name="rate-per-client-ip", priority=0,
            action=aws.wafv2.WebAclRuleActionArgs(block=aws.wafv2.WebAclRuleActionBlockArgs(
                custom_response=aws.wafv2.WebAclRuleActionBlockCustomResponseArgs(
                    response_code=429, custom_response_body_key=RATE_LIMITED_BODY),
            )),
            statement=aws.wafv2.WebAclRuleStatementArgs(
                rate_based_statement=aws.wafv2.WebAclRuleStatementRateBasedStatementArgs(
                    aggregate_key_type="IP", limit=args.rate_limit,
                    evaluation_window_sec=args.rate_window_seconds,
                ),
            ),
            visibility_config=aws.wafv2.WebAclRuleVisibilityConfigArgs(**_visibility("rate-per-client-ip")),
        )]
        for i, group in enumerate(MANAGED_GROUPS, start=1):
            overrides = [
                aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementRuleActionOverrideArgs(
                    name=rule,
                    action_to_use=aws.wafv2.
                    WebAclRuleStatementManagedRuleGroupStatementRuleActionOverrideActionToUseArgs(
                        count=aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementRuleActionOverrideActionToUseCountArgs()),
                )
                for rule in COUNT_ONLY.get(group, [])
            ]
            rules.append(aws.wafv2.WebAclRuleArgs(
                name=group, priority=i,
                override_action=aws.wafv2.WebAclRuleOverrideActionArgs(
                    none=aws.wafv2.WebAclRuleOverrideActionNoneArgs()),  # type: ignore[no-untyped-call]
                statement=aws.wafv2.WebAclRuleStatementArgs(
                    managed_rule_group_statement=aws.wafv2.WebAclRuleStatementManagedRuleGroupStatementArgs(
                        vendor_name="AWS", name=group, rule_action_overrides=overrides or None,
                    ),
                ),
                visibility_config=aws.wafv2.WebAclRuleVisibilityConfigArgs(**_visibility(group)),
            ))
        self.acl = aws.wafv2.WebAcl(
            f"{name}-acl", name=args.name, scope="REGIONAL",
            default_action=aws.wafv2.WebAclDefaultActionArgs(allow=aws.wafv2.WebAclDefaultActionAllowArgs()),
            rules=rules,
            custom_response_bodies=[aws.wafv2.WebAclCustomResponseBodyArgs(
                key=RATE_LIMITED_BODY, content=RATE_LIMITED, content_type="APPLICATION_JSON")],
            visibility_config=aws.wafv2.WebAclVisibilityConfigArgs(**_visibility(args.name)),
            opts=p,
        )
        aws.wafv2.WebAclAssociation(
            f"{name}-alb", resource_arn=args.load_balancer_arn, web_acl_arn=self.acl.arn, opts=p
        )
        logs = aws.cloudwatch.LogGroup(
            f"{name}-logs", name=f"aws-waf-logs-{args.name}",  # WAF requires this prefix
            retention_in_days=args.log_retention_days, kms_key_id=args.kms_key_arn, opts=p,
        )
        aws.wafv2.WebAclLoggingConfiguration(
            f"{name}-logging", resource_arn=self.acl.arn, log_destination_configs=[logs.arn],
            # Clients send their bearer keys in this header: never write it to a log.
            redacted_fields=[aws.wafv2.WebAclLoggingConfigurationRedactedFieldArgs(
                single_header=aws.wafv2.WebAclLoggingConfigurationRedactedFieldSingleHeaderArgs(
                    name="authorization"
                ),
            )],
            opts=p,
        )
        self.web_acl_arn = self.acl.arn
        self.web_acl_name = self.acl.name
        self.register_outputs({"web_acl_arn": self.web_acl_arn, "web_acl_name": self.web_acl_name})
