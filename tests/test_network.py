"""The network as each stack declares it: tiers, CIDRs, routes, NAT, endpoints, flow logs."""

from __future__ import annotations

import ipaddress
import json
from itertools import combinations

import pytest

from tests.conftest import config_of

SUBNET = "aws:ec2/subnet:Subnet"
ROUTE = "aws:ec2/route:Route"
ASSOC = "aws:ec2/routeTableAssociation:RouteTableAssociation"
NAT = "aws:ec2/natGateway:NatGateway"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"



def _tier(stack, tier):
    return [s for s in stack.of_type(SUBNET) if s.inputs["tags"]["Tier"] == tier]


def test_subnets_lie_inside_the_vpc_and_never_overlap(stack):
    vpc = ipaddress.ip_network(stack.one("aws:ec2/vpc:Vpc").inputs["cidrBlock"])
    assert str(vpc) == config_of(stack).network.cidr
    nets = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in stack.of_type(SUBNET)]
    assert all(n.subnet_of(vpc) for n in nets)
    assert not any(a.overlaps(b) for a, b in combinations(nets, 2))


def test_each_tier_has_one_subnet_per_az_in_distinct_azs(stack):
    azs = config_of(stack).network.az_count
    for tier in ("public", "private", "isolated"):
        subnets = _tier(stack, tier)
        assert len(subnets) == azs
        assert len({s.inputs["availabilityZone"] for s in subnets}) == azs
        assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in subnets), "said, not left to a default"


def _routes_of_subnet(stack, subnet):
    (assoc,) = [a for a in stack.of_type(ASSOC) if a.inputs["subnetId"] == f"{subnet.name}-id"]
    table = assoc.inputs["routeTableId"]
    return [r for r in stack.of_type(ROUTE) if r.inputs["routeTableId"] == table]


def test_public_subnets_route_to_the_internet_gateway(stack):
    igw = stack.one("aws:ec2/internetGateway:InternetGateway")
    for subnet in _tier(stack, "public"):
        (route,) = _routes_of_subnet(stack, subnet)
        assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0"
        assert route.inputs["gatewayId"] == f"{igw.name}-id"


def test_private_subnets_route_to_a_nat_in_the_public_tier(stack):
    nats = {f"{n.name}-id": n for n in stack.of_type(NAT)}
    public_ids = {f"{s.name}-id" for s in _tier(stack, "public")}
    used = set()
    for subnet in _tier(stack, "private"):
        (route,) = _routes_of_subnet(stack, subnet)
        assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0"
        nat = nats[route.inputs["natGatewayId"]]
        assert nat.inputs["subnetId"] in public_ids
        used.add(nat.name)
    expected = 3 if stack.stack == "prod" else 1
    assert len(nats) == len(used) == expected


def test_prod_private_subnets_use_the_nat_of_their_own_az(prod):
    subnets = {f"{s.name}-id": s for s in prod.of_type(SUBNET)}
    nats = {f"{n.name}-id": n for n in prod.of_type(NAT)}
    for subnet in _tier(prod, "private"):
        (route,) = _routes_of_subnet(prod, subnet)
        nat_subnet = subnets[nats[route.inputs["natGatewayId"]].inputs["subnetId"]]
        assert nat_subnet.inputs["availabilityZone"] == subnet.inputs["availabilityZone"]


def test_isolated_subnets_have_no_route_out(stack):
    for subnet in _tier(stack, "isolated"):
        assert _routes_of_subnet(stack, subnet) == []


def test_endpoints_only_where_enabled(stack):
    services = sorted(e.inputs["serviceName"].rsplit(".", 1)[-1] if "ecr" not in
                      e.inputs["serviceName"] else e.inputs["serviceName"].split(".", 3)[-1]
                      for e in stack.of_type(ENDPOINT))
    s3 = stack.one(ENDPOINT, "network-s3")
    assert s3.inputs["vpcEndpointType"] == "Gateway"
    interface = [e for e in stack.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Interface"]
    if config_of(stack).network.interface_endpoints:
        assert services == ["ecr.api", "ecr.dkr", "kms", "logs", "s3", "secretsmanager"]
        sg = stack.one("aws:ec2/securityGroup:SecurityGroup", "network-endpoints-sg")
        (rule,) = [r for r in stack.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
                   if r.inputs["securityGroupId"] == f"{sg.name}-id"]
        assert (rule.inputs["ipProtocol"], rule.inputs["fromPort"], rule.inputs["toPort"]) == ("tcp", 443, 443)
        assert rule.inputs["cidrIpv4"] == config_of(stack).network.cidr
        assert rule.inputs["description"] == "HTTPS from the VPC"
        vpc_id = f"{stack.one('aws:ec2/vpc:Vpc').name}-id"
        # A security group's description cannot change in place: a new one replaces the group.
        assert sg.inputs == {"vpcId": vpc_id, "description": "Interface endpoints: HTTPS from inside the VPC only"}
        private = sorted(f"{s.name}-id" for s in _tier(stack, "private"))
        for e in interface:
            assert e.name == "network-" + e.inputs["serviceName"].split(".", 3)[-1].replace(".", "-")
            assert e.inputs["privateDnsEnabled"] is True and e.inputs["vpcId"] == vpc_id
            assert sorted(e.inputs["subnetIds"]) == private, "in the tasks' subnets, one per AZ"
            assert e.inputs["securityGroupIds"] == [f"{sg.name}-id"]
    else:
        assert interface == []
    assert stack.stack != "prod" or interface, "prod turns the interface endpoints on"


def test_default_security_group_has_no_rules(stack):
    default = stack.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert default.inputs.get("ingress", []) == []
    assert default.inputs.get("egress", []) == []


def test_flow_logs_are_on_with_retention_and_the_stack_key(stack):
    flow = stack.one("aws:ec2/flowLog:FlowLog")
    group = stack.one("aws:cloudwatch/logGroup:LogGroup", "network-flow-logs")
    assert flow.inputs["trafficType"] == "ALL"
    assert flow.inputs["logDestination"] == f"arn:aws:logs:us-east-1:123456789012:log-group:{group.name}-0a1b2c3"
    assert group.inputs["retentionInDays"] == config_of(stack).network.flow_log_retention_days
    assert group.inputs["kmsKeyId"] == stack.outputs["kmsKeyArn"]
    assert (flow.inputs["logDestinationType"], flow.inputs["vpcId"]) == ("cloud-watch-logs", "network-vpc-id")
    # The role writes to its own group's streams and nothing else.
    role_policy = json.loads(stack.one("aws:iam/rolePolicy:RolePolicy", "network-flow-logs").inputs["policy"])
    arn = f"arn:aws:logs:us-east-1:123456789012:log-group:{group.name}-0a1b2c3"
    assert role_policy == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        "Resource": [arn, f"{arn}:*"]}]}
    trust = json.loads(stack.one("aws:iam/role:Role", "network-flow-logs").inputs["assumeRolePolicy"])
    assert trust["Version"] == "2012-10-17"
    assert {e.inputs["domain"] for e in stack.of_type("aws:ec2/eip:Eip")} == {"vpc"}


def test_azs_come_from_the_provider_not_the_code(synth):
    synthesis = synth("staging", **{"aws:region": "eu-west-1"}, loadBalancer__certificateArn=(
        "arn:aws:acm:eu-west-1:123456789012:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"))
    azs = {s.inputs["availabilityZone"] for s in synthesis.of_type(SUBNET)}
    assert azs == {"eu-west-1a", "eu-west-1b"}


CERT_TOKYO = "arn:aws:acm:ap-northeast-1:123456789012:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"


def test_only_azs_where_fargate_runs_tasks(synth):
    """In ap-northeast-1 Fargate runs in apne1-az1, az2 and az4 only ("AWS Fargate Regions").
    The mocks answer like an account whose ap-northeast-1b is apne1-az3: no subnet goes there,
    or the tasks of that AZ's share would never start."""
    s = synth("prod", **{"aws:region": "ap-northeast-1"}, loadBalancer__certificateArn=CERT_TOKYO)
    azs = {x.inputs["availabilityZone"] for x in s.of_type(SUBNET)}
    assert azs == {"ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d"}


def test_an_az_count_beyond_the_fargate_azs_is_refused_before_anything_is_declared(synth):
    from infra.config import ConfigError
    with pytest.raises(ConfigError) as e:
        synth("prod", **{"aws:region": "ap-northeast-1"}, loadBalancer__certificateArn=CERT_TOKYO,
              network__azCount=4)
    assert str(e.value) == (
        "llm-service:network.azCount: got 4; ap-northeast-1 has 3 standard AZs where Fargate runs "
        "(ap-northeast-1a, ap-northeast-1c, ap-northeast-1d): at most 3")
    assert not [d for d in e.value.declared if d.custom]


def test_only_standard_azs_never_local_zones(stack):
    """The mocks answer like an account opted in to Local Zones (us-east-1-bos-1a sorts first):
    only a query filtered on opt-in-status keeps them out."""
    azs = {s.inputs["availabilityZone"] for s in stack.of_type(SUBNET)}
    assert azs == {f"us-east-1{c}" for c in "abc"[:config_of(stack).network.az_count]}


def test_flow_log_role_trusts_only_this_accounts_flow_logs(stack):
    role = stack.one("aws:iam/role:Role", "network-flow-logs")
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert statement["Principal"] == {"Service": "vpc-flow-logs.amazonaws.com"}
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": "123456789012"},
        "ArnLike": {"aws:SourceArn": "arn:aws:ec2:us-east-1:123456789012:vpc-flow-log/*"}}


def test_flow_log_is_created_after_its_role_can_write(stack):
    assert stack.one("aws:ec2/flowLog:FlowLog").depends_on == ["network-flow-logs"]
    policy = stack.one("aws:iam/rolePolicy:RolePolicy", "network-flow-logs")
    assert policy.inputs["role"] == "network-flow-logs-id"


def test_subnet_sizes_that_do_not_leave_room_for_every_tier_and_slot_are_refused_with_the_arithmetic():
    from components.network import AZ_SLOTS, TIERS, subnet_cidrs

    needed = len(TIERS) * AZ_SLOTS
    with pytest.raises(ValueError, match=r"^/15 subnets do not fit in 10\.20\.0\.0/16$"):
        subnet_cidrs("10.20.0.0/16", 15, 2)
    # As large as the VPC: one block, where every tier's every slot needs one.
    with pytest.raises(ValueError, match=rf"^10\.20\.0\.0/16 holds 1 /16 subnets; {needed} are needed$"):
        subnet_cidrs("10.20.0.0/16", 16, 2)
    smallest = (needed - 1).bit_length()  # the fewest extra prefix bits that hold `needed` blocks
    tiers = subnet_cidrs("10.20.0.0/16", 16 + smallest, 3)
    assert [len(cidrs) for cidrs in tiers.values()] == [3] * len(TIERS)
    assert tiers[TIERS[1]][0] == str(list(ipaddress.ip_network("10.20.0.0/16").subnets(
        new_prefix=16 + smallest))[AZ_SLOTS])
