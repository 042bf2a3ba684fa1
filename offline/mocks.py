"""Pulumi mocks that answer like AWS would, closely enough for the program to run offline.

They fill in the attributes AWS computes (ids, ARNs, DNS names, endpoints) in the shapes AWS
uses, so that wiring between resources (an ARN in a policy, a suffix in a metric dimension) can
be asserted. They invent nothing the program itself decides.
"""

from __future__ import annotations

import hashlib

import pulumi

from infra import private_api

ACCOUNT = "123456789012"

# Standard AZ letters per region (what DescribeAvailabilityZones lists with opt-in-not-required),
# and a Local Zone where one exists: an account that has opted in gets it too, sorted first,
# unless the program filters on opt-in-status. Regions not listed answer with three AZs.
AZ_LETTERS = {"us-east-1": "abcdef", "us-east-2": "abc", "us-west-1": "bc", "us-west-2": "abcd",
              "eu-west-1": "abc", "eu-central-1": "abc", "ap-northeast-1": "abcd"}
# AZ IDs in the order of the letters above, where an account's mapping matters to a test: an
# account old enough to have ap-northeast-1b has apne1-az3 there, where Fargate runs no task.
ZONE_IDS = {"us-west-1": ["usw1-az3", "usw1-az1"],
            "ap-northeast-1": ["apne1-az4", "apne1-az3", "apne1-az1", "apne1-az2"]}
LOCAL_ZONES = {"us-east-1": ["us-east-1-bos-1a", "us-east-1-mia-1a"],
               "us-west-2": ["us-west-2-lax-1a"]}


def _stable(text: str, digits: int) -> str:
    """An id derived from a name: identical runs give identical plans (never Python's hash())."""
    return str(int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10**digits).zfill(digits)


def availability_zones(region: str, args: dict) -> dict:
    region = args.get("region") or region  # pulumi-aws 7 invokes take a region of their own
    letters = AZ_LETTERS.get(region, "abc")
    ids = ZONE_IDS.get(region) or [f"{region}-az{i + 1}" for i in range(len(letters))]
    zones = dict(zip((f"{region}{c}" for c in letters), ids, strict=True))
    filters = {f.get("name"): f.get("values") for f in args.get("filters") or []}
    if filters.get("opt-in-status") != ["opt-in-not-required"]:
        zones.update({z: f"{z}-id" for z in LOCAL_ZONES.get(region, [])})
    if "zone-id" in filters:
        zones = {z: i for z, i in zones.items() if i in filters["zone-id"]}
    names = sorted(zones)
    return {"names": names, "zoneIds": [zones[z] for z in names], "id": region}

# Resource types whose ARN AWS writes as `<service>:<region>:<account>:<kind>:<name>`.
_COLON_ARNS = {"aws:cloudwatch/logGroup:LogGroup": "log-group", "aws:sns/topic:Topic": None}


class AwsMocks(pulumi.runtime.Mocks):
    def __init__(self, region: str):
        self.region = region

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        name = args.name
        rid = f"{name}-id"
        typ = args.typ
        if not args.custom:
            return rid, state
        if typ in _EXTRAS and not typ.startswith("aws:"):
            _EXTRAS[typ](self, state, name)
            return rid, state
        service = typ.split(":")[1].split("/")[0]
        kind = typ.rsplit(":", 1)[1].lower()
        prefix = f"arn:aws:{service}:{self.region}:{ACCOUNT}"
        # The provider autonames resources that are given no name: `<logical name>-<suffix>`.
        state.setdefault("name", f"{name}-0a1b2c3")
        state.setdefault("arn", f"{prefix}:{kind}/{name}")
        extra = _EXTRAS.get(typ)
        if extra:
            rid = extra(self, state, name) or rid
        state.setdefault("id", rid)
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        token = args.token
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return availability_zones(self.region, dict(args.args)), []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/plan",
                "userId": "AIDAPLAN",
                "id": ACCOUNT,
            }, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": "mock-ecr-token", "authorizationToken": "QVdTOm1vY2s=",
                    "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com",
                    "expiresAt": "2026-01-01T00:00:00Z", "id": ACCOUNT}, []
        raise NotImplementedError(f"the offline mocks do not answer {token}")


def _log_group(m: AwsMocks, s: dict, name: str):
    s["arn"] = f"arn:aws:logs:{m.region}:{ACCOUNT}:log-group:{s['name']}"
    return s["name"]


def _topic(m: AwsMocks, s: dict, name: str):
    s["arn"] = f"arn:aws:sns:{m.region}:{ACCOUNT}:{s.get('name', name)}"
    return s["arn"]


def _kms_key(m: AwsMocks, s: dict, name: str):
    key_id = f"mrk-{_stable(name, 12)}"
    s["arn"] = f"arn:aws:kms:{m.region}:{ACCOUNT}:key/{key_id}"
    s["keyId"] = key_id
    return key_id


def _secret(m: AwsMocks, s: dict, name: str):
    s["arn"] = f"arn:aws:secretsmanager:{m.region}:{ACCOUNT}:secret:{s.get('name', name)}-AbCdEf"
    return s["arn"]


def _lb(m: AwsMocks, s: dict, name: str):
    s["arnSuffix"] = f"app/{s.get('name', name)}/0123456789abcdef"
    s["arn"] = f"arn:aws:elasticloadbalancing:{m.region}:{ACCOUNT}:loadbalancer/{s['arnSuffix']}"
    s["dnsName"] = f"{s.get('name', name)}-1234567890.{m.region}.elb.amazonaws.com"
    s["zoneId"] = "Z35SXDOTRQ7X7K"


def _target_group(m: AwsMocks, s: dict, name: str):
    s["arnSuffix"] = f"targetgroup/{s.get('name', name)}/fedcba9876543210"
    s["arn"] = f"arn:aws:elasticloadbalancing:{m.region}:{ACCOUNT}:{s['arnSuffix']}"


def _cluster(m: AwsMocks, s: dict, name: str):
    s["arn"] = f"arn:aws:ecs:{m.region}:{ACCOUNT}:cluster/{s.get('name', name)}"
    return s["arn"]


def _ecs_service(m: AwsMocks, s: dict, name: str):
    return f"arn:aws:ecs:{m.region}:{ACCOUNT}:service/{s.get('name', name)}"


def _replication_group(m: AwsMocks, s: dict, name: str):
    rg = s.get("replicationGroupId", name)
    s["primaryEndpointAddress"] = f"master.{rg}.abc123.use1.cache.amazonaws.com"
    s["readerEndpointAddress"] = f"replica.{rg}.abc123.use1.cache.amazonaws.com"
    s["memberClusters"] = [f"{rg}-{i + 1:03d}" for i in range(int(s.get("numCacheClusters", 1)))]
    return rg


def _role(m: AwsMocks, s: dict, name: str):
    s["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{s.get('name', name)}"
    s.setdefault("name", name)


def _vpc(m: AwsMocks, s: dict, name: str):
    s["defaultSecurityGroupId"] = f"sg-default-{name}"
    s["mainRouteTableId"] = f"rtb-main-{name}"


def _web_acl(m: AwsMocks, s: dict, name: str):
    s["arn"] = f"arn:aws:wafv2:{m.region}:{ACCOUNT}:regional/webacl/{s.get('name', name)}/0000"


def _ecr(m: AwsMocks, s: dict, name: str):
    s["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{m.region}.amazonaws.com/{s.get('name', name)}"
    s["registryId"] = ACCOUNT  # the account the repository is in, as ECR answers


def _random_password(m: AwsMocks, s: dict, name: str):
    s["result"] = private_api.wrap_secret("mock-generated-password-0123456789")


def _random_id(m: AwsMocks, s: dict, name: str):
    s["hex"] = _stable(name, 2 * int(s.get("byteLength", 4)))


def _docker_image(m: AwsMocks, s: dict, name: str):
    # The digest of what would be pushed: derived from the tags (which carry the content hash).
    s["digest"] = "sha256:" + hashlib.sha256(repr(s.get("tags")).encode()).hexdigest()
    s["ref"] = f"{(s.get('tags') or [name])[0].split(':')[0]}@{s['digest']}"


def _bucket(m: AwsMocks, s: dict, name: str):
    bucket = s.get("bucket", name)
    s["arn"] = f"arn:aws:s3:::{bucket}"
    s["bucket"] = bucket
    return bucket


def _certificate(m: AwsMocks, s: dict, name: str):
    domain = s.get("domainName", "example.com")
    s["domainValidationOptions"] = [{
        "domainName": domain, "resourceRecordName": f"_0123abcd.{domain}.",
        "resourceRecordType": "CNAME", "resourceRecordValue": "_4567efgh.acm-validations.aws.",
    }]
    s["arn"] = f"arn:aws:acm:{m.region}:{ACCOUNT}:certificate/{name}"


def _record(m: AwsMocks, s: dict, name: str):
    s["fqdn"] = str(s.get("name", name)).rstrip(".")


_EXTRAS = {
    "aws:acm/certificate:Certificate": _certificate,
    "aws:route53/record:Record": _record,
    "aws:cloudwatch/logGroup:LogGroup": _log_group,
    "aws:sns/topic:Topic": _topic,
    "aws:kms/key:Key": _kms_key,
    "aws:secretsmanager/secret:Secret": _secret,
    "aws:lb/loadBalancer:LoadBalancer": _lb,
    "aws:lb/targetGroup:TargetGroup": _target_group,
    "aws:ecs/cluster:Cluster": _cluster,
    "aws:ecs/service:Service": _ecs_service,
    "aws:elasticache/replicationGroup:ReplicationGroup": _replication_group,
    "aws:iam/role:Role": _role,
    "aws:ec2/vpc:Vpc": _vpc,
    "aws:wafv2/webAcl:WebAcl": _web_acl,
    "aws:ecr/repository:Repository": _ecr,
    "random:index/randomPassword:RandomPassword": _random_password,
    "random:index/randomId:RandomId": _random_id,
    "docker-build:index:Image": _docker_image,
    "aws:s3/bucket:Bucket": _bucket,
}
