"""The cache as each stack declares it."""

from __future__ import annotations

from tests.conftest import config_of

RG = "aws:elasticache/replicationGroup:ReplicationGroup"



def test_encrypted_in_transit_and_at_rest_with_the_stack_key(stack):
    g = stack.one(RG).inputs
    assert g["transitEncryptionEnabled"] is True and g["transitEncryptionMode"] == "required"
    assert g["atRestEncryptionEnabled"] is True
    assert g["kmsKeyId"] == stack.outputs["kmsKeyArn"]
    assert g["engine"] == "valkey"


def test_lives_in_the_isolated_subnets(stack):
    subnets = stack.one("aws:elasticache/subnetGroup:SubnetGroup")
    assert subnets.inputs["subnetIds"] == stack.outputs["isolatedSubnetIds"]
    assert stack.one(RG).inputs["subnetGroupName"] == f"{subnets.name}-0a1b2c3"


def test_security_group_admits_only_the_service(stack):
    rules = [r for r in stack.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
             if r.inputs["securityGroupId"] == "cache-sg-id"]
    (rule,) = rules
    assert rule.inputs["referencedSecurityGroupId"] == "service-sg-id"
    assert rule.inputs["fromPort"] == rule.inputs["toPort"] == 6379
    sg = stack.one("aws:ec2/securityGroup:SecurityGroup", "cache-sg")
    assert not sg.inputs.get("ingress")


def test_parameter_group_family_and_lru_eviction(stack):
    params = stack.one("aws:elasticache/parameterGroup:ParameterGroup").inputs
    assert params["family"] == "valkey8"
    assert {"name": "maxmemory-policy", "value": "allkeys-lru"} in params["parameters"]
    assert stack.one(RG).inputs["parameterGroupName"] == "cache-params-0a1b2c3"


def test_redis_engine_gets_a_redis_family(synth):
    s = synth("staging", cache__engine="redis", cache__engineVersion="7.1")
    assert s.one("aws:elasticache/parameterGroup:ParameterGroup").inputs["family"] == "redis7"
    assert s.one(RG).inputs["engine"] == "redis"


def test_nodes_failover_and_snapshots_per_stack(staging, prod):
    s, p = staging.one(RG).inputs, prod.one(RG).inputs
    assert s["numCacheClusters"] == 1 and not s["automaticFailoverEnabled"] and not s["multiAzEnabled"]
    assert p["numCacheClusters"] >= 2 and p["automaticFailoverEnabled"] and p["multiAzEnabled"]
    assert s["snapshotRetentionLimit"] == 0 and p["snapshotRetentionLimit"] >= 7
    # Both apply at once: a change held for the maintenance window reads back as a change on
    # every preview until then (the daily drift check would fail for up to a week).
    assert s["applyImmediately"] is True and p["applyImmediately"] is True
    assert prod.one(RG).protect and not staging.one(RG).protect


def test_each_stacks_node_type_engine_and_windows_reach_the_group(stack):
    group, cfg = stack.one(RG).inputs, config_of(stack).cache
    assert (group["nodeType"], group["engine"], group["engineVersion"], group["port"]) == (
        cfg.node_type, cfg.engine, cfg.engine_version, cfg.port)
    assert (group["snapshotWindow"], group["maintenanceWindow"]) == (cfg.snapshot_window, cfg.maintenance_window)


def test_final_snapshot_name_is_new_for_each_life_of_the_cache(prod, staging):
    """A fixed name collides on the second destroy; the suffix comes from a random id created and
    destroyed with the stack."""
    rid = prod.one("random:index/randomId:RandomId", "cache-final-snapshot")
    from offline.mocks import _stable
    suffix = _stable("cache-final-snapshot", 2 * int(rid.inputs["byteLength"]))
    assert prod.one(RG).inputs["finalSnapshotIdentifier"] == f"llm-service-prod-final-{suffix}"
    assert "finalSnapshotIdentifier" not in staging.one(RG).inputs, "no snapshots, no final one"


def test_logs_delivered_to_retained_log_groups(stack):
    deliveries = {d["logType"]: d for d in stack.one(RG).inputs["logDeliveryConfigurations"]}
    assert set(deliveries) == {"slow-log", "engine-log"}
    for kind, d in deliveries.items():
        group = stack.one("aws:cloudwatch/logGroup:LogGroup", f"cache-{kind}")
        assert d["destination"] == group.inputs["name"]
        assert group.inputs["retentionInDays"] == config_of(stack).cache.log_retention_days
        assert group.inputs["kmsKeyId"] == stack.outputs["kmsKeyArn"]


def test_one_port_from_config_to_group_rule_and_container(stack):
    port = config_of(stack).cache.port
    assert stack.one(RG).inputs["port"] == port
    assert stack.outputs["cachePort"] == port
    egress = [r for r in stack.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
              if r.inputs.get("referencedSecurityGroupId") == "cache-sg-id"]
    assert [(r.inputs["fromPort"], r.inputs["toPort"]) for r in egress] == [(port, port)]
