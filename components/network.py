"""A VPC with public, private and isolated subnets in each AZ, NAT by strategy, endpoints, flow logs.

Creates: the VPC; an internet gateway; per AZ one public subnet (load balancer, NAT), one private
subnet (tasks; default route to a NAT) and one isolated subnet (cache; no route out); one NAT
gateway (`single`) or one per AZ (`per_az`); a free S3 gateway endpoint; optionally interface
endpoints for Secrets Manager, ECR, CloudWatch Logs and KMS, and GuardDuty's runtime-monitoring
endpoint; the default security group emptied; flow logs to an encrypted CloudWatch log group.

Cost: each NAT gateway about $33/month plus $0.045/GB; each interface endpoint about $7.30/month
per AZ ($110/month for the 5 endpoints in 3 AZs); flow logs $0.50/GB ingested.

Args (`NetworkArgs`, each described where it is declared below):
    cidr: str, required
    az_count: int, required
    region: str, required
    nat_strategy: Literal['single', 'per_az'] = 'single'
    subnet_prefix_length: int = 20
    interface_endpoints: bool = False
    flow_log_retention_days: int = 30
    kms_key_arn: Optional[pulumi.Input[str]] = None
    iam_path: str = '/'
    guard_duty_endpoint: bool = False

Outputs: egress, vpc_id, cidr, public_subnet_ids, private_subnet_ids, isolated_subnet_ids.

Example (examples/network/, runs as written beside a copy of this file):

    import pulumi
    from network import Network, NetworkArgs

    net = Network("network", NetworkArgs(cidr="10.40.0.0/16", az_count=2, region="eu-west-1"))
    pulumi.export("privateSubnetIds", net.private_subnet_ids)
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Literal, Optional

import pulumi
import pulumi_aws as aws

# DescribeAvailabilityZones filter for the region's own AZs, never Local or Wavelength Zones.
STANDARD_AZS = [aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])]
# Regions where Fargate runs Linux tasks in some AZs only, by AZ ID (AZ names map to IDs
# differently in each account). Source: the ECS developer guide, "AWS Fargate Regions" (Linux
# containers); a subnet in another AZ of these regions would never host a task.
FARGATE_ZONE_IDS = {
    "us-west-1": ["usw1-az1", "usw1-az3"],
    "ap-northeast-1": ["apne1-az1", "apne1-az2", "apne1-az4"],
    "cn-north-1": ["cnn1-az1", "cnn1-az2"],
}


def zone_filters(region: str) -> list[aws.GetAvailabilityZonesFilterArgs]:
    """The region's standard AZs where Fargate runs tasks: the AZs this layout may use."""
    ids = FARGATE_ZONE_IDS.get(region)
    return STANDARD_AZS + ([aws.GetAvailabilityZonesFilterArgs(name="zone-id", values=ids)] if ids else [])
AZ_SLOTS = 4  # subnets are carved in fixed slots per tier, so adding an AZ moves nothing
TIERS = ("public", "private", "isolated")
INTERFACE_ENDPOINTS = ("secretsmanager", "ecr.api", "ecr.dkr", "logs", "kms")
GUARDDUTY_ENDPOINT = "guardduty-data"  # where GuardDuty's runtime agent sends its events


def problems(a: NetworkArgs) -> list[tuple[str, str]]:
    """What the VPC layout cannot hold, as (argument, why); [] when none. Works on any object
    with NetworkArgs's field names (cidr, az_count, subnet_prefix_length)."""
    try:
        vpc = ipaddress.ip_network(a.cidr, strict=True)
    except ValueError as e:
        return [("cidr", f"not an IPv4 CIDR ({e})")]
    if vpc.version != 4 or not 16 <= vpc.prefixlen <= 28:
        return [("cidr", "a VPC is an IPv4 CIDR of /16 to /28")]
    if not 1 <= a.az_count <= AZ_SLOTS:
        return [("az_count", f"1 to {AZ_SLOTS} (subnets are carved in {AZ_SLOTS} AZ slots per tier)")]
    try:
        subnet_cidrs(a.cidr, a.subnet_prefix_length, a.az_count)
    except ValueError:
        needed = len(TIERS) * AZ_SLOTS
        return [("cidr", f"needs room for {len(TIERS)} tiers x {AZ_SLOTS} AZ slots = {needed} subnets of "
                         f"/{a.subnet_prefix_length}; use a /{a.subnet_prefix_length - 4} or larger VPC, "
                         "or a longer `subnet_prefix_length`")]
    return []


@dataclass
class NetworkArgs:
    cidr: str
    """The VPC's address range (AWS: /16 to /28); the component carves 12 subnets from it."""
    az_count: int
    """Availability zones used; the region must have this many standard AZs where Fargate runs (asked at
    preview)."""
    region: str
    """The region, for the endpoints' service names and the AZs."""
    nat_strategy: Literal["single", "per_az"] = "single"
    """One NAT gateway for the VPC, or one per AZ (an AZ outage then cuts no other AZ's egress)."""
    subnet_prefix_length: int = 20
    """Prefix length of every subnet (AWS: /16 to /28), longer than the VPC's."""
    interface_endpoints: bool = False
    """Interface endpoints (Secrets Manager, ECR API and Docker, CloudWatch Logs, KMS) in each AZ instead of
    the NAT."""
    flow_log_retention_days: int = 30
    """Days VPC flow logs are kept in CloudWatch Logs."""
    kms_key_arn: Optional[pulumi.Input[str]] = None
    """The KMS key that encrypts the flow logs; None leaves them to CloudWatch's own encryption."""
    iam_path: str = "/"
    """The path of the flow logs' role, e.g. /llm-service/staging/, so a deploy role's IAM rights can be
    scoped to it."""
    guard_duty_endpoint: bool = False
    """True where the account runs GuardDuty Runtime Monitoring for Fargate: the VPC endpoint GuardDuty needs
    is declared here. With automated agent configuration GuardDuty otherwise adds one of its own to the VPC
    of every monitored task and deletes it only when Runtime Monitoring is disabled, so the VPC could not
    be deleted; it reuses one that exists."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"NetworkArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


def subnet_cidrs(cidr: str, prefix_length: int, az_count: int) -> dict[str, list[str]]:
    """CIDRs per tier, one per AZ: tier t, AZ i takes slot t * AZ_SLOTS + i."""
    vpc = ipaddress.ip_network(cidr)
    if prefix_length < vpc.prefixlen:
        raise ValueError(f"/{prefix_length} subnets do not fit in {cidr}")
    blocks = list(vpc.subnets(new_prefix=prefix_length))
    if len(blocks) < len(TIERS) * AZ_SLOTS:
        raise ValueError(f"{cidr} holds {len(blocks)} /{prefix_length} subnets; "
                         f"{len(TIERS) * AZ_SLOTS} are needed")
    return {
        tier: [str(blocks[t * AZ_SLOTS + i]) for i in range(az_count)]
        for t, tier in enumerate(TIERS)
    }


class Network(pulumi.ComponentResource):
    egress: list[pulumi.Resource]
    """What makes the private subnets' way out: their routes and route table associations, the NAT gateways
    behind them, the endpoints. Whatever runs there (the service's tasks) is created after these, or a new
    AZ's first tasks could not pull their image or read secrets."""
    vpc_id: pulumi.Output[str]
    """The VPC's id."""
    cidr: str
    """The VPC's address range."""
    public_subnet_ids: list[pulumi.Output[str]]
    """One public subnet per AZ (the load balancer's)."""
    private_subnet_ids: list[pulumi.Output[str]]
    """One private subnet per AZ (the tasks'), out through the NAT or the endpoints."""
    isolated_subnet_ids: list[pulumi.Output[str]]
    """One isolated subnet per AZ (the cache's), with no route out."""

    def __init__(self, name: str, args: NetworkArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:network:Network", name, None, opts)
        p = pulumi.ResourceOptions(parent=self)
        self.cidr = args.cidr
        # Standard AZs only: where an account has opted in to Local Zones, they are returned too
        # (and their names sort first), and opting in later would move every subnet. And only
        # AZs where Fargate runs tasks.
        zones = aws.get_availability_zones_output(
            state="available", filters=zone_filters(args.region), opts=pulumi.InvokeOutputOptions(parent=self),
        ).names
        azs = [zones[i] for i in range(args.az_count)]
        cidrs = subnet_cidrs(args.cidr, args.subnet_prefix_length, args.az_count)

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=args.cidr, enable_dns_support=True,
            enable_dns_hostnames=True, tags={"Name": name}, opts=p,
        )
        self.vpc_id = self.vpc.id
        # Take every rule off the default group, so nothing that lands in it by mistake is open.
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg", vpc_id=self.vpc.id, ingress=[], egress=[], opts=p
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, opts=p)

        subnets: dict[str, list[aws.ec2.Subnet]] = {}
        for tier in TIERS:
            subnets[tier] = [
                aws.ec2.Subnet(
                    f"{name}-{tier}-{i}", vpc_id=self.vpc.id, cidr_block=cidrs[tier][i],
                    availability_zone=azs[i], map_public_ip_on_launch=False,
                    tags={"Name": f"{name}-{tier}-{i}", "Tier": tier}, opts=p,
                )
                for i in range(args.az_count)
            ]

        public_rt = aws.ec2.RouteTable(f"{name}-public-rt", vpc_id=self.vpc.id, opts=p)
        aws.ec2.Route(
            f"{name}-public-default", route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0", gateway_id=igw.id, opts=p,
        )
        for i, s in enumerate(subnets["public"]):
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=s.id, route_table_id=public_rt.id, opts=p
            )

        nat_count = args.az_count if args.nat_strategy == "per_az" else 1
        nats = []
        for i in range(nat_count):
            eip = aws.ec2.Eip(f"{name}-nat-eip-{i}", domain="vpc", opts=p)
            nats.append(aws.ec2.NatGateway(
                f"{name}-nat-{i}", allocation_id=eip.id, subnet_id=subnets["public"][i].id,
                connectivity_type="public",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            ))

        private_rts = []
        self.egress = []
        for i, s in enumerate(subnets["private"]):
            rt = aws.ec2.RouteTable(f"{name}-private-rt-{i}", vpc_id=self.vpc.id, opts=p)
            self.egress += [
                aws.ec2.Route(
                    f"{name}-private-default-{i}", route_table_id=rt.id,
                    destination_cidr_block="0.0.0.0/0", nat_gateway_id=nats[i % nat_count].id, opts=p,
                ),
                aws.ec2.RouteTableAssociation(
                    f"{name}-private-{i}", subnet_id=s.id, route_table_id=rt.id, opts=p
                ),
            ]
            private_rts.append(rt)

        # Isolated subnets get a table with only the local route: no way out at all.
        isolated_rt = aws.ec2.RouteTable(f"{name}-isolated-rt", vpc_id=self.vpc.id, opts=p)
        for i, s in enumerate(subnets["isolated"]):
            aws.ec2.RouteTableAssociation(
                f"{name}-isolated-{i}", subnet_id=s.id, route_table_id=isolated_rt.id, opts=p
            )

        self.egress.append(aws.ec2.VpcEndpoint(
            f"{name}-s3", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway", route_table_ids=[rt.id for rt in private_rts], opts=p,
        ))
        services = [*(INTERFACE_ENDPOINTS if args.interface_endpoints else ()),
                    *((GUARDDUTY_ENDPOINT,) if args.guard_duty_endpoint else ())]
        if services:
            self.egress += self._interface_endpoints(name, args, [s.id for s in subnets["private"]], services)

        self._flow_logs(name, args)

        self.public_subnet_ids = [s.id for s in subnets["public"]]
        self.private_subnet_ids = [s.id for s in subnets["private"]]
        self.isolated_subnet_ids = [s.id for s in subnets["isolated"]]
        self.register_outputs({
            "vpc_id": self.vpc_id,
            "cidr": self.cidr,
            "public_subnet_ids": self.public_subnet_ids,
            "private_subnet_ids": self.private_subnet_ids,
            "isolated_subnet_ids": self.isolated_subnet_ids,
        })

    def _interface_endpoints(self, name: str, args: NetworkArgs, subnet_ids: list[pulumi.Output[str]],
                             services: list[str]) -> list[pulumi.Resource]:
        p = pulumi.ResourceOptions(parent=self)
        sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints-sg", vpc_id=self.vpc.id,
            description="Interface endpoints: HTTPS from inside the VPC only", opts=p,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-endpoints-https", security_group_id=sg.id, cidr_ipv4=args.cidr,
            ip_protocol="tcp", from_port=443, to_port=443,
            description="HTTPS from the VPC", opts=p,
        )
        return [
            aws.ec2.VpcEndpoint(
                f"{name}-{svc.replace('.', '-')}", vpc_id=self.vpc.id,
                service_name=f"com.amazonaws.{args.region}.{svc}", vpc_endpoint_type="Interface",
                private_dns_enabled=True, subnet_ids=subnet_ids, security_group_ids=[sg.id],
                opts=p,
            )
            for svc in services
        ]

    def _flow_logs(self, name: str, args: NetworkArgs) -> None:
        p = pulumi.ResourceOptions(parent=self)
        ident = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        part = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self))
        group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs", retention_in_days=args.flow_log_retention_days,
            kms_key_id=args.kms_key_arn, opts=p,
        )
        role = aws.iam.Role(
            f"{name}-flow-logs", assume_role_policy=pulumi.Output.all(
                ident.account_id, part.partition
            ).apply(lambda a: flow_log_trust(a[0], a[1], args.region)),
            path=args.iam_path, opts=p,
        )
        role_policy = aws.iam.RolePolicy(
            f"{name}-flow-logs", role=role.id,
            policy=group.arn.apply(lambda arn: json.dumps({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogStream", "logs:PutLogEvents",
                               "logs:DescribeLogStreams"],
                    "Resource": [arn, f"{arn}:*"],
                }],
            })), opts=p,
        )
        aws.ec2.FlowLog(
            f"{name}-flow-log", vpc_id=self.vpc.id, traffic_type="ALL",
            log_destination_type="cloud-watch-logs", log_destination=group.arn,
            iam_role_arn=role.arn, max_aggregation_interval=60,
            # CreateFlowLogs checks the role can write at once; without its policy it fails.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )


def flow_log_trust(account: str, partition: str, region: str) -> str:
    """VPC Flow Logs may assume the role only for flow logs of this account and region
    (the confused-deputy guard AWS documents for the service)."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": f"arn:{partition}:ec2:{region}:{account}:vpc-flow-log/*"},
            },
        }],
    })
