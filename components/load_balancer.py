"""An internet-facing Application Load Balancer tuned for streamed LLM responses.

Creates: the ALB in the public subnets; its security group (443 from the given CIDRs, 80 only for
the optional redirect; egress is added by whoever owns the targets, see `Service`); an HTTPS
listener with a TLS 1.3 policy and an ACM certificate (given, or issued with DNS validation in a
Route 53 zone, plus an alias record); an `ip` target group with least-outstanding-requests
routing; an access-log bucket (SSE-S3, private, versioned, expiring). There is no plain-HTTP
forwarding mode: API clients send a bearer key with every request.

Cost: about $16/month plus $5.84 per LCU-month; the log bucket costs S3 storage.

Args (`LoadBalancerArgs`, each described where it is declared below):
    vpc_id: pulumi.Input[str], required
    subnet_ids: list[pulumi.Input[str]], required
    container_port: int, required
    certificate_arn: str = ''
    domain_name: str = ''
    hosted_zone_id: str = ''
    http_mode: Literal['none', 'redirect'] = 'none'
    ingress_cidrs: list[str] = ['0.0.0.0/0']
    ingress_ipv6_cidrs: list[str] = ['::/0']
    idle_timeout_seconds: int = 600
    health_check_path: str = '/healthz'
    deregistration_delay_seconds: int = 60
    ssl_policy: str = 'ELBSecurityPolicy-TLS13-1-2-2021-06'
    deletion_protection: bool = False
    access_log_retention_days: int = 90
    region: Optional[str] = None

Outputs: listener, arn, arn_suffix, dns_name, security_group_id, target_group_arn,
target_group_arn_suffix, url.

Example (examples/load_balancer/, runs as written beside a copy of this file):

    import pulumi
    from load_balancer import LoadBalancer, LoadBalancerArgs

    alb = LoadBalancer("alb", LoadBalancerArgs(
        vpc_id="vpc-0123456789abcdef0", subnet_ids=["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"],
        container_port=8080,
        certificate_arn="arn:aws:acm:eu-west-1:111122223333:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"))
    pulumi.export("url", alb.url)
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pulumi
import pulumi_aws as aws

# The ALB's predefined TLS 1.3 security policies (ALBs take no custom ones). Source: the ALB
# user guide, "Security policies for your Application Load Balancer" (2025-09 edition, with the
# post-quantum and FIPS policies). Policies without TLS 1.3 (ELBSecurityPolicy-2016-08, the
# FS-* and TLS-1-* ones) exist but are refused: the policy pack requires TLS 1.3 in transit.
SSL_POLICIES = frozenset(
    [f"ELBSecurityPolicy-TLS13-{v}-2021-06"
     for v in ("1-3", "1-2", "1-2-Res", "1-2-Ext1", "1-2-Ext2", "1-1", "1-0")]
    + [f"ELBSecurityPolicy-TLS13-{v}-FIPS-2023-04"
       for v in ("1-3", "1-2", "1-2-Res", "1-2-Ext0", "1-2-Ext1", "1-2-Ext2", "1-1", "1-0")]
    + [f"ELBSecurityPolicy-TLS13-{v}-PQ-2025-09"
       for v in ("1-3", "1-2", "1-2-Res", "1-2-Ext1", "1-2-Ext2")]
    + [f"ELBSecurityPolicy-TLS13-{v}-FIPS-PQ-2025-09"
       for v in ("1-3", "1-2", "1-2-Res", "1-2-Ext0", "1-2-Ext1", "1-2-Ext2")]
)
# The target group's health check: a registered target is checked every interval, and taken out
# of rotation after UNHEALTHY_THRESHOLD failures in a row.
HEALTH_CHECK_INTERVAL, HEALTH_CHECK_TIMEOUT, UNHEALTHY_THRESHOLD = 15, 5, 3
# The longest a target that starts failing its health checks still gets new requests.
OUT_OF_ROTATION_SECONDS = UNHEALTHY_THRESHOLD * HEALTH_CHECK_INTERVAL + HEALTH_CHECK_TIMEOUT
# The regional Elastic Load Balancing accounts that deliver access logs in Regions opened before
# August 2022. Source: the ALB user guide, "Enable access logs" (bucket permissions), whose table
# the Terraform provider's aws_elb_service_account carries too (plus the China Regions). Regions
# opened since have no such account (that data source fails there: "unsupported AWS Region") and
# deliver as the log-delivery service principal, which AWS now recommends in every Region.
ELB_LOG_ACCOUNTS = {
    "us-east-1": "127311923021", "us-east-2": "033677994240", "us-west-1": "027434742980",
    "us-west-2": "797873946194", "af-south-1": "098369216593", "ap-east-1": "754344448648",
    "ap-southeast-3": "589379963580", "ap-south-1": "718504428378", "ap-northeast-3": "383597477331",
    "ap-northeast-2": "600734575887", "ap-southeast-1": "114774131450", "ap-southeast-2": "783225319266",
    "ap-northeast-1": "582318560864", "ca-central-1": "985666609251", "eu-central-1": "054676820928",
    "eu-west-1": "156460612806", "eu-west-2": "652711504416", "eu-south-1": "635631232127",
    "eu-west-3": "009996457667", "eu-north-1": "897822967062", "me-south-1": "076674570225",
    "sa-east-1": "507241528517", "us-gov-east-1": "190560391635", "us-gov-west-1": "048591011584",
    "cn-north-1": "638102146993", "cn-northwest-1": "037604701340",
}
# Predefined policies that exist but offer no TLS 1.3, named so the refusal can say so.
SSL_POLICIES_WITHOUT_TLS13 = frozenset([
    "ELBSecurityPolicy-2016-08", "ELBSecurityPolicy-2015-05", "ELBSecurityPolicy-TLS-1-0-2015-04",
    "ELBSecurityPolicy-TLS-1-1-2017-01", "ELBSecurityPolicy-TLS-1-2-2017-01",
    "ELBSecurityPolicy-TLS-1-2-Ext-2018-06", "ELBSecurityPolicy-FS-2018-06",
    "ELBSecurityPolicy-FS-1-1-2019-08", "ELBSecurityPolicy-FS-1-2-2019-08",
    "ELBSecurityPolicy-FS-1-2-Res-2019-08", "ELBSecurityPolicy-FS-1-2-Res-2020-10",
])


def problems(a: LoadBalancerArgs) -> list[tuple[str, str]]:
    """What Elastic Load Balancing, ACM or a security group would refuse in these arguments, as
    (argument, why); [] when none. Works on any object with LoadBalancerArgs's field names."""
    found = []
    if not (a.certificate_arn or (a.domain_name and a.hosted_zone_id)):
        found.append(("certificate_arn", "HTTPS needs `certificate_arn`, or `domain_name` with "
                                         "`hosted_zone_id` (the stack issues and validates the certificate "
                                         "in that Route 53 zone)"))
    if a.hosted_zone_id and not a.domain_name:
        found.append(("hosted_zone_id", "a zone without `domain_name` has nothing to hold; set "
                                        "`domain_name`, or \"\" here"))
    if a.ssl_policy in SSL_POLICIES_WITHOUT_TLS13:
        found.append(("ssl_policy", "that policy offers no TLS 1.3; use ELBSecurityPolicy-TLS13-1-2-2021-06 "
                                    "or another ELBSecurityPolicy-TLS13-* policy"))
    elif a.ssl_policy not in SSL_POLICIES:
        found.append(("ssl_policy", "not an ALB security policy with TLS 1.3; e.g. "
                                    "ELBSecurityPolicy-TLS13-1-2-2021-06, "
                                    "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09 "
                                    "(`aws elbv2 describe-ssl-policies`)"))
    for arg, version in (("ingress_cidrs", 4), ("ingress_ipv6_cidrs", 6)):
        for i, cidr in enumerate(getattr(a, arg)):
            try:
                net = ipaddress.ip_network(cidr, strict=True)
                if net.version != version:
                    found.append((f"{arg}[{i}]", f"an IPv{net.version} CIDR where IPv{version} is expected"))
            except ValueError as e:
                found.append((f"{arg}[{i}]", f"not an IPv{version} CIDR ({e})"))
    if not (a.ingress_cidrs or a.ingress_ipv6_cidrs):
        found.append(("ingress_cidrs", "with `ingress_ipv6_cidrs` empty too, nobody can reach the service; "
                                       "name at least one range"))
    if not 1 <= a.idle_timeout_seconds <= 4000:
        found.append(("idle_timeout_seconds", "ALB idle timeouts are 1 to 4000 seconds"))
    if not 0 <= a.deregistration_delay_seconds <= 3600:
        found.append(("deregistration_delay_seconds", "0 to 3600 seconds"))
    return found


@dataclass
class LoadBalancerArgs:
    vpc_id: pulumi.Input[str]
    """The VPC of the load balancer and its target group."""
    subnet_ids: list[pulumi.Input[str]]
    """The public subnets the ALB spans, one per AZ."""
    container_port: int
    """The port the targets listen on."""
    certificate_arn: str = ""
    """The ACM certificate the HTTPS listener serves; "" when domain_name and hosted_zone_id let the component
    issue one."""
    domain_name: str = ""
    """The service's name; with hosted_zone_id the component issues its certificate and DNS record."""
    hosted_zone_id: str = ""
    """The Route 53 public zone of domain_name."""
    http_mode: Literal["none", "redirect"] = "none"
    """Port 80: closed (none), or a 301 to HTTPS (redirect). Never forwarded: clients send keys."""
    ingress_cidrs: list[str] = field(default_factory=lambda: ["0.0.0.0/0"])
    """Who may reach the listeners over IPv4."""
    ingress_ipv6_cidrs: list[str] = field(default_factory=lambda: ["::/0"])
    """Who may reach the listeners over IPv6."""
    idle_timeout_seconds: int = 600
    """Seconds a connection may carry no byte (ALB: 1 to 4,000). Streamed completions hold a connection open
    for minutes; AWS's 60 s default cuts them off."""
    health_check_path: str = "/healthz"
    """The target group's health check path (ALB: up to 1,024 characters, starting with /)."""
    deregistration_delay_seconds: int = 60
    """The longest stream a deploy or scale-in never cuts: requests in flight on a stopping task run this long
    before ECS sends SIGTERM (ALB: 0 to 3,600)."""
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"
    """The HTTPS listener's predefined security policy."""
    deletion_protection: bool = False
    """AWS refuses to delete the ALB while this is on."""
    access_log_retention_days: int = 90
    """Days ALB access logs stay in their S3 bucket."""
    region: Optional[str] = None
    """The region, for the access-log bucket's policy: where it has one, the Region's legacy ELB log account
    may write the access logs too. None is the provider's."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"LoadBalancerArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


class LoadBalancer(pulumi.ComponentResource):
    listener: aws.lb.Listener
    """The listener that forwards to the target group: an ECS service registering targets must wait for it (a
    target group joins a load balancer only through a listener)."""
    arn: pulumi.Output[str]
    """The ALB's ARN."""
    arn_suffix: pulumi.Output[str]
    """The ALB's ARN suffix (app/<name>/<id>), the LoadBalancer dimension of its metrics."""
    dns_name: pulumi.Output[str]
    """The ALB's DNS name: point the service's name at it."""
    security_group_id: pulumi.Output[str]
    """The ALB's security group: the tasks let in only this group."""
    target_group_arn: pulumi.Output[str]
    """The target group the service registers its tasks in."""
    target_group_arn_suffix: pulumi.Output[str]
    """The target group's ARN suffix, the TargetGroup dimension of its metrics."""
    url: pulumi.Output[Optional[str]]
    """https://<the DNS name or domain_name>: where clients call; None only where the DNS name is
    unknown (a mock)."""

    def __init__(self, name: str, args: LoadBalancerArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:load_balancer:LoadBalancer", name, None, opts)
        p = pulumi.ResourceOptions(parent=self)

        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id, description="Load balancer: listener ports only",
            opts=p,
        )
        ports = [443] + ([80] if args.http_mode == "redirect" else [])
        for port in ports:
            for i, cidr in enumerate(args.ingress_cidrs):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-in-{port}-v4-{i}", security_group_id=self.security_group.id,
                    cidr_ipv4=cidr, ip_protocol="tcp", from_port=port, to_port=port,
                    description=f"clients on {port}", opts=p,
                )
            for i, cidr in enumerate(args.ingress_ipv6_cidrs):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-in-{port}-v6-{i}", security_group_id=self.security_group.id,
                    cidr_ipv6=cidr, ip_protocol="tcp", from_port=port, to_port=port,
                    description=f"clients on {port} (IPv6)", opts=p,
                )

        logs = self._log_bucket(name, args)
        self.lb = aws.lb.LoadBalancer(
            f"{name}-lb", load_balancer_type="application", internal=False,
            # The VPC is IPv4-only; "dualstack" needs IPv6 CIDRs on the VPC and subnets.
            ip_address_type="ipv4",
            subnets=args.subnet_ids, security_groups=[self.security_group.id],
            idle_timeout=args.idle_timeout_seconds, drop_invalid_header_fields=True,
            enable_http2=True, desync_mitigation_mode="defensive",
            enable_deletion_protection=args.deletion_protection,
            access_logs=aws.lb.LoadBalancerAccessLogsArgs(
                bucket=logs.bucket, prefix="alb", enabled=True
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs.policy]),
        )
        self.target_group = aws.lb.TargetGroup(
            f"{name}-tg", target_type="ip", port=args.container_port, protocol="HTTP",
            protocol_version="HTTP1", vpc_id=args.vpc_id,
            # LLM requests last from milliseconds to minutes: round robin would pile
            # new requests onto a task that is still streaming.
            load_balancing_algorithm_type="least_outstanding_requests",
            deregistration_delay=args.deregistration_delay_seconds,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True, path=args.health_check_path, protocol="HTTP", matcher="200",
                interval=HEALTH_CHECK_INTERVAL, timeout=HEALTH_CHECK_TIMEOUT, healthy_threshold=2,
                unhealthy_threshold=UNHEALTHY_THRESHOLD,
            ),
            opts=p,
        )
        forward = [aws.lb.ListenerDefaultActionArgs(
            type="forward", target_group_arn=self.target_group.arn
        )]
        self.listener = aws.lb.Listener(
            f"{name}-https", load_balancer_arn=self.lb.arn, port=443, protocol="HTTPS",
            ssl_policy=args.ssl_policy, certificate_arn=self._certificate(name, args),
            default_actions=forward, opts=p,
        )
        if args.http_mode == "redirect":
            # For browser-facing use only: API clients have sent their key in clear by now.
            aws.lb.Listener(
                f"{name}-http", load_balancer_arn=self.lb.arn, port=80, protocol="HTTP",
                default_actions=[aws.lb.ListenerDefaultActionArgs(
                    type="redirect",
                    redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                        protocol="HTTPS", port="443", status_code="HTTP_301"
                    ),
                )],
                opts=p,
            )

        host = args.domain_name or self.lb.dns_name
        if args.domain_name and args.hosted_zone_id:
            aws.route53.Record(
                f"{name}-alias", zone_id=args.hosted_zone_id, name=args.domain_name, type="A",
                aliases=[aws.route53.RecordAliasArgs(
                    name=self.lb.dns_name, zone_id=self.lb.zone_id, evaluate_target_health=True,
                )],
                opts=p,
            )
        self.arn = self.lb.arn
        self.arn_suffix = self.lb.arn_suffix
        self.dns_name = self.lb.dns_name
        self.security_group_id = self.security_group.id
        self.target_group_arn = self.target_group.arn
        self.target_group_arn_suffix = self.target_group.arn_suffix
        # None, not "https://None", where a value is not known (a test's mock leaves dns_name unset).
        self.url = pulumi.Output.from_input(host).apply(_https_url)
        self.register_outputs({
            "arn": self.arn, "dns_name": self.dns_name, "url": self.url,
            "security_group_id": self.security_group_id,
            "target_group_arn": self.target_group_arn, "arn_suffix": self.arn_suffix,
            "target_group_arn_suffix": self.target_group_arn_suffix,
        })

    def _certificate(self, name: str, args: LoadBalancerArgs) -> pulumi.Input[str]:
        if args.certificate_arn:
            return args.certificate_arn
        p = pulumi.ResourceOptions(parent=self)
        cert = aws.acm.Certificate(
            f"{name}-cert", domain_name=args.domain_name, validation_method="DNS",
            opts=p,
        )
        option = cert.domain_validation_options[0]
        record = aws.route53.Record(
            f"{name}-cert-validation", zone_id=args.hosted_zone_id,
            name=option.resource_record_name, type=option.resource_record_type,
            records=[option.resource_record_value], ttl=300, allow_overwrite=True, opts=p,
        )
        return aws.acm.CertificateValidation(
            f"{name}-cert", certificate_arn=cert.arn, validation_record_fqdns=[record.fqdn],
            opts=p,
        ).certificate_arn

    def _log_bucket(self, name: str, args: LoadBalancerArgs) -> _LogBucket:
        p = pulumi.ResourceOptions(parent=self)
        # Emptied on destroy (every version) unless deletion protection is on: a versioned bucket
        # holding objects cannot be deleted otherwise, and with protection on nothing may delete
        # the logs (a replacement fails instead). A teardown's `up` turns it off first.
        bucket = aws.s3.Bucket(f"{name}-logs", force_destroy=not args.deletion_protection, opts=p)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-logs", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=p,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-logs", bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=p,
        )
        # SSE-S3, not KMS: ALB log delivery cannot write to a KMS-encrypted bucket
        # (aws-cdk#21947), and the failure shows only as missing logs.
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-logs", bucket=bucket.id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"
                ),
            )],
            opts=p,
        )
        # Versioned, so a log object cannot be overwritten or deleted without a trace; the old
        # versions expire after the same retention as the logs themselves.
        versioning = aws.s3.BucketVersioning(
            f"{name}-logs", bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=p,
        )
        everything = aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="")
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-logs", bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-access-logs", status="Enabled", filter=everything,
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        days=args.access_log_retention_days
                    ),
                    noncurrent_version_expiration=aws.s3.
                    BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=args.access_log_retention_days
                    ),
                    abort_incomplete_multipart_upload=aws.s3.
                    BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=7
                    ),
                ),
                # S3 refuses Days and ExpiredObjectDeleteMarker in one rule: a rule of its own
                # removes the markers left once every version under them has expired.
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="remove-expired-delete-markers", status="Enabled", filter=everything,
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        expired_object_delete_marker=True
                    ),
                ),
            ],
            # S3 applies noncurrent-version rules only to a versioned bucket.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        policy = aws.s3.BucketPolicy(
            f"{name}-logs", bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: access_log_policy(arn, args.region)),
            opts=p,
        )
        return _LogBucket(bucket.bucket, policy)


@dataclass
class _LogBucket:
    bucket: pulumi.Output[str]
    policy: aws.s3.BucketPolicy


def access_log_policy(bucket_arn: str, region: Optional[str]) -> str:
    """The log-delivery service principal writes the logs (every Region); where the Region has a
    legacy ELB account (opened before August 2022), that account too. To the log prefix only,
    over TLS only."""
    target = f"{bucket_arn}/alb/AWSLogs/*"
    partition = "aws-cn" if str(region).startswith("cn-") else (
        "aws-us-gov" if str(region).startswith("us-gov-") else "aws")
    legacy = [{"Sid": "RegionalElbAccountWritesLogs", "Effect": "Allow",
               "Principal": {"AWS": f"arn:{partition}:iam::{ELB_LOG_ACCOUNTS[region]}:root"},
               "Action": "s3:PutObject", "Resource": target}] if region in ELB_LOG_ACCOUNTS else []
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            *legacy,
            {"Sid": "LogDeliveryServiceWritesLogs", "Effect": "Allow",
             "Principal": {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"},
             "Action": "s3:PutObject", "Resource": target},
            {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": [bucket_arn, f"{bucket_arn}/*"],
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        ],
    })


def _https_url(host: Optional[str]) -> Optional[str]:
    return f"https://{host}" if host else None
