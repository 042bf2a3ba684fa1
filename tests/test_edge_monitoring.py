"""WAF, alarms, dashboard, budget and tags, as each stack declares them."""

from __future__ import annotations

import json

from tests.conftest import config_of, container, policy

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"



def _rules(stack):
    return {r["name"]: r for r in stack.one("aws:wafv2/webAcl:WebAcl").inputs["rules"]}


def test_acl_is_associated_with_this_stacks_alb(stack):
    acl = stack.one("aws:wafv2/webAcl:WebAcl")
    assoc = stack.one("aws:wafv2/webAclAssociation:WebAclAssociation")
    assert acl.inputs["scope"] == "REGIONAL"
    assert assoc.inputs["resourceArn"] == stack.outputs["albArn"]
    assert assoc.inputs["webAclArn"] == stack.outputs["webAclArn"]


def test_rate_limit_per_client_ip_from_config(stack, staging, prod):
    rate = _rules(stack)["rate-per-client-ip"]
    statement = rate["statement"]["rateBasedStatement"]
    cfg = config_of(stack).edge
    assert statement["aggregateKeyType"] == "IP"
    assert (statement["limit"], statement["evaluationWindowSec"]) == (cfg.rate_limit, cfg.rate_window_seconds)
    # Over the limit, a client's SDK reads a 429 in OpenAI's shape and backs off.
    response = rate["action"]["block"]["customResponse"]
    assert response["responseCode"] == 429
    (body,) = stack.one("aws:wafv2/webAcl:WebAcl").inputs["customResponseBodies"]
    assert body["key"] == response["customResponseBodyKey"] and body["contentType"] == "APPLICATION_JSON"
    error = json.loads(body["content"])["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded") and error["message"]
    assert len(body["content"].encode()) <= 4096, "WAF's limit on a custom response body"
    limit = lambda s: _rules(s)["rate-per-client-ip"]["statement"]["rateBasedStatement"]["limit"]  # noqa: E731
    assert limit(staging) < limit(prod)


def test_managed_rules_on_bodies_only_count_and_every_other_rule_blocks(stack):
    """A prompt quoting HTML, a ../ path, 169.254.169.254 or ${jndi: is text for a model: the
    body rules count (metrics, labels); nothing else is overridden, so URI, query, header and
    cookie rules still block."""
    rules = _rules(stack)
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet",
            "AWSManagedRulesAmazonIpReputationList"} <= set(rules)

    def counted(group):
        statement = rules[group]["statement"]["managedRuleGroupStatement"]
        overrides = statement.get("ruleActionOverrides") or []
        assert all(o["actionToUse"] == {"count": {}} for o in overrides)
        return {o["name"] for o in overrides}

    assert counted("AWSManagedRulesCommonRuleSet") == {
        "SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY", "GenericRFI_BODY",
        "EC2MetaDataSSRF_BODY"}
    assert counted("AWSManagedRulesKnownBadInputsRuleSet") == {"Log4JRCE_BODY", "JavaDeserializationRCE_BODY"}
    assert counted("AWSManagedRulesAmazonIpReputationList") == set()
    assert all(r.get("overrideAction") == {"none": {}} for n, r in rules.items() if n != "rate-per-client-ip")
    assert all(r["visibilityConfig"]["cloudwatchMetricsEnabled"] for r in rules.values())


def test_the_acl_whole_rule_order_metrics_and_default(stack):
    """What WAF evaluates, in order: the rate rule first (so a flood is refused before the managed
    groups spend their capacity on it), then the three AWS groups by vendor and name; every rule and
    the ACL itself publish metrics and sampled requests under their own names (the dashboard's and
    alarms' dimensions); a request no rule blocks is allowed."""
    acl = stack.one("aws:wafv2/webAcl:WebAcl")
    name = f"llm-service-{stack.stack}"
    assert acl.inputs["name"] == name
    assert acl.inputs["defaultAction"] == {"allow": {}}
    visible = lambda metric: {"cloudwatchMetricsEnabled": True, "metricName": metric,  # noqa: E731
                              "sampledRequestsEnabled": True}
    assert acl.inputs["visibilityConfig"] == visible(name)
    rules = acl.inputs["rules"]
    assert [(r["name"], r["priority"]) for r in rules] == [
        ("rate-per-client-ip", 0), ("AWSManagedRulesCommonRuleSet", 1),
        ("AWSManagedRulesKnownBadInputsRuleSet", 2), ("AWSManagedRulesAmazonIpReputationList", 3)]
    assert all(r["visibilityConfig"] == visible(r["name"]) for r in rules)
    for rule in rules[1:]:
        statement = rule["statement"]["managedRuleGroupStatement"]
        assert (statement["vendorName"], statement["name"]) == ("AWS", rule["name"])
    assert "ruleActionOverrides" not in rules[3]["statement"]["managedRuleGroupStatement"]
    assert rules[0]["action"]["block"]["customResponse"] == {
        "responseCode": 429, "customResponseBodyKey": "rate-limited"}
    (body,) = acl.inputs["customResponseBodies"]
    assert json.loads(body["content"]) == {"error": {
        "message": "Too many requests from this address; slow down and retry later.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded"}}


def test_waf_logs_to_a_prefixed_retained_group_without_authorization(stack):
    group = stack.one("aws:cloudwatch/logGroup:LogGroup", "edge-logs")
    assert group.inputs["name"] == f"aws-waf-logs-llm-service-{stack.stack}"
    assert group.inputs["kmsKeyId"] == stack.outputs["kmsKeyArn"]
    assert group.inputs["retentionInDays"] == config_of(stack).edge.log_retention_days
    logging = stack.one("aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")
    assert logging.inputs["logDestinationConfigs"] == [
        f"arn:aws:logs:us-east-1:123456789012:log-group:{group.inputs['name']}"]
    assert logging.inputs["redactedFields"] == [{"singleHeader": {"name": "authorization"}}]
    assert logging.inputs["resourceArn"] == stack.outputs["webAclArn"]


def test_alarm_topic_is_encrypted_and_publishable_by_cloudwatch_and_budgets(stack):
    topic = stack.one("aws:sns/topic:Topic")
    assert topic.inputs["kmsMasterKeyId"] == stack.outputs["kmsKeyArn"]
    (statement,) = policy(stack.one("aws:sns/topicPolicy:TopicPolicy"))["Statement"]
    assert set(statement["Principal"]["Service"]) == {"cloudwatch.amazonaws.com", "budgets.amazonaws.com"}
    assert statement["Resource"] == stack.outputs["alarmTopicArn"]
    subs = stack.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert sorted(s.inputs["endpoint"] for s in subs) == sorted(config_of(stack).monitoring.alert_emails)


def _alarm(stack, suffix):
    return stack.one(ALARM, f"monitoring-{suffix}").inputs


def test_every_alarm_has_both_actions_and_its_stacks_threshold(stack):
    t = config_of(stack).monitoring
    expected = {
        "alb-5xx": t.alb_5xx_per_minute, "target-5xx": t.target_5xx_per_minute,
        "latency-p95": t.p95_latency_seconds, "latency-p99": t.p99_latency_seconds,
        "unhealthy-hosts": 0, "tasks-below-minimum": config_of(stack).service.min_tasks,
        "service-cpu": t.cpu_high_percent, "service-memory": t.memory_high_percent,
        "waf-blocked-spike": t.waf_blocked_per_5min, "cache-cpu": t.cache_cpu_percent,
        "cache-memory": t.cache_memory_percent, "cache-evictions": t.cache_evictions_per_5min,
        "cache-hit-rate-low": t.cache_hit_rate_min_percent,
        "gateway-ttft-p95": config_of(stack).gateway.ttft_p95_alarm_seconds * 1000,
        "gateway-upstream-429": config_of(stack).gateway.upstream_429_per_5min,
        "gateway-cache-errors": config_of(stack).gateway.cache_errors_per_5min,
        "gateway-spend-per-hour": config_of(stack).gateway.spend_per_hour_alarm_usd,
    }
    assert {a.name.removeprefix("monitoring-") for a in stack.of_type(ALARM)} == set(expected)
    topic = stack.outputs["alarmTopicArn"]
    for suffix, threshold in expected.items():
        a = _alarm(stack, suffix)
        assert a["threshold"] == threshold, suffix
        assert a["alarmActions"] == [topic] and a["okActions"] == [topic], suffix
        # No data from the task count is the outage itself; from any other metric, nothing wrong.
        missing = "breaching" if suffix == "tasks-below-minimum" else "notBreaching"
        assert a["treatMissingData"] == missing, suffix


def test_alarm_dimensions_name_this_stacks_resources(stack):
    lb = stack.outputs["albArn"].split(":loadbalancer/")[1]
    tg = stack.outputs["targetGroupArn"].split(":")[-1]
    assert _alarm(stack, "alb-5xx")["dimensions"] == {"LoadBalancer": lb}
    assert _alarm(stack, "latency-p99")["dimensions"] == {"LoadBalancer": lb, "TargetGroup": tg}
    assert _alarm(stack, "latency-p99")["extendedStatistic"] == "p99"
    tasks = _alarm(stack, "tasks-below-minimum")
    assert tasks["dimensions"] == {"ClusterName": stack.outputs["clusterName"],
                                   "ServiceName": stack.outputs["serviceName"]}
    assert tasks["treatMissingData"] == "breaching", "no task reporting is the outage itself"
    queries = _alarm(stack, "cache-evictions")["metricQueries"]
    members = [q["metric"]["dimensions"]["CacheClusterId"] for q in queries if "metric" in q]
    nodes = config_of(stack).cache.nodes
    assert members == [f"{stack.outputs['cacheReplicationGroupId']}-{i + 1:03d}" for i in range(nodes)]


def test_gateway_alarms_read_the_metrics_the_gateway_writes(stack):
    """The alarm's namespace, metric and dimension are what gateway/observe.py puts in each log
    line, and the Service value is what the task tells the gateway (GATEWAY_SERVICE)."""
    from gateway.observe import METRICS

    env = {e["name"]: e["value"] for e in container(stack)["environment"]}
    for suffix, metric, stat in (("gateway-ttft-p95", "TimeToFirstToken", "p95"),
                                 ("gateway-upstream-429", "Upstream429", "Sum"),
                                 ("gateway-cache-errors", "CacheErrors", "Sum"),
                                 ("gateway-spend-per-hour", "EstimatedCostUSD", "Sum")):
        a = _alarm(stack, suffix)
        assert a["namespace"] == env["GATEWAY_METRICS_NAMESPACE"] == "LLMService"
        assert a["metricName"] == metric and metric in METRICS
        assert a["dimensions"] == {"Service": env["GATEWAY_SERVICE"]} == {"Service": f"llm-service-{stack.stack}"}
        assert stat in (a.get("extendedStatistic"), a.get("statistic"))


def _dashboard_metrics(stack):
    body = json.loads(stack.one("aws:cloudwatch/dashboard:Dashboard").inputs["dashboardBody"])
    for widget in body["widgets"]:
        for metric in widget["properties"]["metrics"]:
            yield widget["properties"]["title"], metric


def test_the_cache_hit_ratio_alarm_reads_the_gateways_hits_and_misses(stack):
    from gateway.observe import METRICS

    a = _alarm(stack, "cache-hit-rate-low")
    queries = {q["id"]: q for q in a["metricQueries"]}
    assert {queries[i]["metric"]["metricName"] for i in ("hits", "misses")} == {"CacheHits", "CacheMisses"}
    assert {"CacheHits", "CacheMisses"} <= set(METRICS)
    service = {"Service": f"llm-service-{stack.stack}"}
    assert all(queries[i]["metric"]["dimensions"] == service for i in ("hits", "misses"))
    assert queries["ratio"]["expression"] == "IF(hits + misses >= 20, 100 * hits / (hits + misses), 100)"
    assert a["comparisonOperator"] == "LessThanThreshold"
    assert a["threshold"] == config_of(stack).monitoring.cache_hit_rate_min_percent


def test_dashboard_is_json_and_names_this_stacks_ids(stack):
    ids = {
        "LoadBalancer": stack.outputs["albArn"].split(":loadbalancer/")[1],
        "TargetGroup": stack.outputs["targetGroupArn"].split(":")[-1],
        "ClusterName": stack.outputs["clusterName"], "ServiceName": stack.outputs["serviceName"],
        "WebACL": f"llm-service-{stack.stack}", "Region": "us-east-1", "Rule": "ALL",
        "Service": f"llm-service-{stack.stack}",
    }
    members = {f"{stack.outputs['cacheReplicationGroupId']}-{i + 1:03d}"
               for i in range(config_of(stack).cache.nodes)}
    titles, seen = set(), set()
    for title, metric in _dashboard_metrics(stack):
        titles.add(title)
        if isinstance(metric[0], dict):  # a SEARCH expression: the spend of each client
            expression = metric[0]["expression"]
            assert f'Service="llm-service-{stack.stack}"' in expression
            assert "{LLMService,Service,Client}" in expression
            seen.add(expression.split('MetricName="')[1].split('"')[0])
            continue
        parts = [p for p in metric if isinstance(p, str)]
        dims = dict(zip(parts[2::2], parts[3::2], strict=True))
        seen.add(parts[1])
        for key, value in dims.items():
            if key == "CacheClusterId":
                assert value in members
            else:
                assert value == ids[key], (title, key, value)
    assert {"RequestCount", "TargetResponseTime", "HTTPCode_Target_5XX_Count", "HealthyHostCount",
            "RunningTaskCount", "CPUUtilization", "MemoryUtilization", "Evictions",
            "AllowedRequests", "BlockedRequests", "TimeToFirstToken", "Upstream429", "Upstream5xx",
            "InputTokens", "OutputTokens", "CacheHits", "CacheMisses", "CacheCoalesced", "CacheErrors",
            "EstimatedCostUSD", "RejectedRequests", "RejectedTokens", "RejectedSpend"} <= seen
    assert stack.outputs["dashboardUrl"].endswith(f"#dashboards:name=llm-service-{stack.stack}")


def test_budget_filters_on_this_environment_with_each_threshold(stack):
    budget = stack.one("aws:budgets/budget:Budget").inputs
    cfg = config_of(stack).budget
    assert budget["costFilters"] == [{"name": "TagKeyValue", "values": [f"user:Environment${stack.stack}"]}]
    assert float(budget["limitAmount"]) == cfg.monthly_limit_usd and budget["timeUnit"] == "MONTHLY"
    got = sorted((n["notificationType"], n["threshold"]) for n in budget["notifications"])
    want = sorted([("ACTUAL", t) for t in cfg.actual_thresholds] +
                  [("FORECASTED", t) for t in cfg.forecast_thresholds])
    assert got == want
    for n in budget["notifications"]:
        assert n["subscriberSnsTopicArns"] == [stack.outputs["alarmTopicArn"]]
        assert sorted(n["subscriberEmailAddresses"]) == sorted(config_of(stack).monitoring.alert_emails)


def test_every_aws_resource_gets_the_required_tags_from_the_provider(stack):
    provider = stack.one("pulumi:providers:aws", "aws")
    tags = provider.inputs["defaultTags"]
    tags = json.loads(tags)["tags"] if isinstance(tags, str) else tags["tags"]
    cfg = config_of(stack)
    assert tags == {"Project": "llm-service", "Environment": stack.stack, "ManagedBy": "pulumi",
                    **cfg.tags}
    assert {"Owner", "CostCenter"} <= set(tags)
    aws_resources = [r for r in stack.resources if r.custom and r.type.startswith("aws:")]
    assert aws_resources
    for r in aws_resources:
        assert "pulumi:providers:aws::aws::" in r.provider, f"{r.type} {r.name} skips the tagged provider"
