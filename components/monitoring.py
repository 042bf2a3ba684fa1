"""Alarms, an encrypted alarm topic and a dashboard for the LLM service.

Creates: an SNS topic under the stack's KMS key (the key policy must let CloudWatch and AWS Budgets
use it; see `components.secrets_store.key_policy`), a topic policy for those publishers, e-mail
subscriptions; CloudWatch alarms with alarm and OK actions (5xx, p95/p99 latency, unhealthy hosts,
running tasks below the minimum, service CPU and memory, cache CPU, memory, evictions and hit
rate... and from the gateway's own metrics: time to first token p95, the LLM API's 429s, the cache
hit ratio and cache errors, estimated spend per hour); a dashboard rendered from `DASHBOARD`
(a template in this file).

Cost: $0.10 per alarm-month (17 here; the percentile alarms $0.30, metric-math ones $0.10 per
metric), $3/month for the dashboard, SNS e-mail free up to 1,000 a month.

Args (`MonitoringArgs`, each described where it is declared below):
    name: str, required
    region: str, required
    kms_key_arn: pulumi.Input[str], required
    lb_arn_suffix: pulumi.Input[str], required
    target_group_arn_suffix: pulumi.Input[str], required
    cluster_name: pulumi.Input[str], required
    service_name: pulumi.Input[str], required
    cache_member_ids: list[str], required
    web_acl_name: pulumi.Input[str], required
    min_tasks: int, required
    max_tasks: int, required
    alert_emails: list[str] = []
    thresholds: Thresholds = Thresholds()
    metrics_namespace: str = 'LLMService'
    gateway_service: pulumi.Input[str] = ''
    upstreams: list[str] = []

`Thresholds`:
    target_5xx_per_minute: int = 5
    alb_5xx_per_minute: int = 5
    p95_latency_seconds: float = 20.0
    p99_latency_seconds: float = 60.0
    cpu_high_percent: int = 85
    memory_high_percent: int = 85
    cache_cpu_percent: int = 80
    cache_memory_percent: int = 85
    cache_evictions_per_5min: int = 100
    cache_hit_rate_min_percent: int = 20
    waf_blocked_per_5min: int = 500
    ttft_p95_seconds: float = 10.0
    upstream_429_per_5min: int = 20
    cache_errors_per_5min: int = 10
    spend_per_hour_usd: float = 10.0

Outputs: topic_arn, dashboard_url, alarm_names.

Example (examples/monitoring/, runs as written beside a copy of this file):

    import pulumi
    from monitoring import Monitoring, MonitoringArgs

    mon = Monitoring("monitoring", MonitoringArgs(
        name="my-app", region="eu-west-1",
        kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        lb_arn_suffix="app/my-alb/0123456789abcdef", target_group_arn_suffix="targetgroup/my-app/0123456789abcdef",
        cluster_name="my-app", service_name="my-app", cache_member_ids=["my-app-cache-001"],
        web_acl_name="my-app", min_tasks=1, max_tasks=4, alert_emails=["oncall@mycompany.com"]))
    pulumi.export("dashboardUrl", mon.dashboard_url)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import jinja2
import pulumi
import pulumi_aws as aws

# The dashboard body, a Jinja template of CloudWatch's dashboard JSON. Inlined (rather than a
# file beside this one) so that copying this file alone into another project copies it too.
DASHBOARD = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False,  # noqa: S701 - JSON, not HTML
).from_string(r'''{#- CloudWatch dashboard body. Rendered by components/monitoring.py; every id comes from the stack. -#}
{%- macro cache_metrics(metric, stat) -%}
{%- for member in cache_members -%}
["AWS/ElastiCache", "{{ metric }}", "CacheClusterId", "{{ member }}", {"stat": "{{ stat }}"}]{{ "," if not loop.last }}
{%- endfor -%}
{%- endmacro -%}
{
  "start": "-PT6H",
  "periodOverride": "inherit",
  "widgets": [
    {"type": "metric", "x": 0, "y": 0, "width": 12, "height": 6, "properties": {
      "title": "Requests", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 60,
      "metrics": [["AWS/ApplicationELB", "RequestCount", "LoadBalancer", "{{ lb }}"]]}},
    {"type": "metric", "x": 12, "y": 0, "width": 12, "height": 6, "properties": {
      "title": "Target response time (s): p50, p95, p99", "region": "{{ region }}", "view": "timeSeries", "period": 60,
      "metrics": [
        ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}", {"stat": "p50"}],
        ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}", {"stat": "p95"}],
        ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}", {"stat": "p99"}]],
      "annotations": {"horizontal": [{"label": "p95 alarm", "value": {{ p95 }}}, {"label": "p99 alarm", "value": {{ p99 }}}]}}},
    {"type": "metric", "x": 0, "y": 6, "width": 12, "height": 6, "properties": {
      "title": "4xx and 5xx", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 60,
      "metrics": [
        ["AWS/ApplicationELB", "HTTPCode_ELB_4XX_Count", "LoadBalancer", "{{ lb }}"],
        ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", "{{ lb }}"],
        ["AWS/ApplicationELB", "HTTPCode_Target_4XX_Count", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}"],
        ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}"]]}},
    {"type": "metric", "x": 12, "y": 6, "width": 12, "height": 6, "properties": {
      "title": "Healthy and unhealthy targets", "region": "{{ region }}", "view": "timeSeries", "stat": "Minimum", "period": 60,
      "metrics": [
        ["AWS/ApplicationELB", "HealthyHostCount", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}"],
        ["AWS/ApplicationELB", "UnHealthyHostCount", "LoadBalancer", "{{ lb }}", "TargetGroup", "{{ tg }}", {"stat": "Maximum"}]]}},
    {"type": "metric", "x": 0, "y": 12, "width": 12, "height": 6, "properties": {
      "title": "Running tasks (min {{ min_tasks }}, max {{ max_tasks }})", "region": "{{ region }}", "view": "timeSeries", "period": 60,
      "metrics": [["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", "{{ cluster }}", "ServiceName", "{{ service }}", {"stat": "Average"}]],
      "annotations": {"horizontal": [{"label": "min", "value": {{ min_tasks }}}, {"label": "max", "value": {{ max_tasks }}}]},
      "yAxis": {"left": {"min": 0, "max": {{ max_tasks + 1 }}}}}},
    {"type": "metric", "x": 12, "y": 12, "width": 12, "height": 6, "properties": {
      "title": "Service CPU and memory (%)", "region": "{{ region }}", "view": "timeSeries", "stat": "Average", "period": 60,
      "metrics": [
        ["AWS/ECS", "CPUUtilization", "ClusterName", "{{ cluster }}", "ServiceName", "{{ service }}"],
        ["AWS/ECS", "MemoryUtilization", "ClusterName", "{{ cluster }}", "ServiceName", "{{ service }}"]],
      "yAxis": {"left": {"min": 0, "max": 100}}}},
    {"type": "metric", "x": 0, "y": 18, "width": 12, "height": 6, "properties": {
      "title": "Gateway cache: hits, misses, coalesced, errors", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 300,
      "metrics": [
        ["{{ namespace }}", "CacheHits", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "CacheMisses", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "CacheCoalesced", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "CacheErrors", "Service", "{{ gateway }}"]]}},
    {"type": "metric", "x": 12, "y": 18, "width": 12, "height": 6, "properties": {
      "title": "Cache evictions", "region": "{{ region }}", "view": "timeSeries", "period": 300,
      "metrics": [{{ cache_metrics("Evictions", "Sum") }}]}},
    {"type": "metric", "x": 0, "y": 24, "width": 24, "height": 6, "properties": {
      "title": "WAF allowed and blocked", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 300,
      "metrics": [
        ["AWS/WAFV2", "AllowedRequests", "WebACL", "{{ web_acl }}", "Region", "{{ region }}", "Rule", "ALL"],
        ["AWS/WAFV2", "BlockedRequests", "WebACL", "{{ web_acl }}", "Region", "{{ region }}", "Rule", "ALL"]]}},
    {"type": "metric", "x": 0, "y": 30, "width": 8, "height": 6, "properties": {
      "title": "Gateway: time to first token (ms)", "region": "{{ region }}", "view": "timeSeries", "period": 60,
      "metrics": [
        ["{{ namespace }}", "TimeToFirstToken", "Service", "{{ gateway }}", {"stat": "p50"}],
        ["{{ namespace }}", "TimeToFirstToken", "Service", "{{ gateway }}", {"stat": "p95"}]],
      "annotations": {"horizontal": [{"label": "p95 alarm", "value": {{ ttft_p95_ms }}}]}}},
    {"type": "metric", "x": 8, "y": 30, "width": 8, "height": 6, "properties": {
      "title": "Gateway: LLM API 429 and 5xx, retries", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 60,
      "metrics": [
        ["{{ namespace }}", "Upstream429", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "Upstream5xx", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "Retries", "Service", "{{ gateway }}"]]}},
    {"type": "metric", "x": 16, "y": 30, "width": 8, "height": 6, "properties": {
      "title": "Gateway: tokens in and out", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 300,
      "metrics": [
        ["{{ namespace }}", "InputTokens", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "OutputTokens", "Service", "{{ gateway }}"]]}},
    {"type": "metric", "x": 0, "y": 36, "width": 12, "height": 6, "properties": {
      "title": "Gateway: estimated spend per client (USD per hour)", "region": "{{ region }}", "view": "timeSeries", "period": 3600,
      "metrics": [[{"expression": "SEARCH('{{ '{' }}{{ namespace }},Service,Client{{ '}' }} MetricName=\"EstimatedCostUSD\" Service=\"{{ gateway }}\"', 'Sum', 3600)", "id": "spend", "label": ""}]],
      "annotations": {"horizontal": [{"label": "all clients: alarm", "value": {{ spend_alarm }}}]}}},
    {"type": "metric", "x": 12, "y": 36, "width": 12, "height": 6, "properties": {
      "title": "Gateway: requests refused by client limits", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 300,
      "metrics": [
        ["{{ namespace }}", "RejectedRequests", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "RejectedTokens", "Service", "{{ gateway }}"],
        ["{{ namespace }}", "RejectedSpend", "Service", "{{ gateway }}"]]}}{% if upstreams %},
    {"type": "metric", "x": 0, "y": 42, "width": 12, "height": 6, "properties": {
      "title": "Gateway: calls, errors and 429s per upstream", "region": "{{ region }}", "view": "timeSeries", "stat": "Sum", "period": 60,
      "metrics": [{% for u in upstreams %}
        ["{{ namespace }}", "UpstreamRequests", "Service", "{{ gateway }}", "Upstream", "{{ u }}"],
        ["{{ namespace }}", "UpstreamErrors", "Service", "{{ gateway }}", "Upstream", "{{ u }}"],
        ["{{ namespace }}", "UpstreamThrottled", "Service", "{{ gateway }}", "Upstream", "{{ u }}"]{{ "," if not loop.last }}{% endfor %}]}},
    {"type": "metric", "x": 12, "y": 42, "width": 12, "height": 6, "properties": {
      "title": "Gateway: upstreams cooling down (1), latency p99 (ms, right)", "region": "{{ region }}", "view": "timeSeries", "period": 60,
      "metrics": [{% for u in upstreams %}
        ["{{ namespace }}", "UpstreamCoolingDown", "Service", "{{ gateway }}", "Upstream", "{{ u }}", {"stat": "Maximum"}],
        ["{{ namespace }}", "UpstreamLatency", "Service", "{{ gateway }}", "Upstream", "{{ u }}", {"stat": "p99", "yAxis": "right"}]{{ "," if not loop.last }}{% endfor %}]}}{% endif %}
  ]
}
''')


UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # gateway/settings.py UPSTREAM_NAME


@dataclass
class Thresholds:
    target_5xx_per_minute: int = 5
    """5xx answers from tasks per minute that raise an alarm."""
    alb_5xx_per_minute: int = 5
    """5xx answers from the load balancer itself per minute that raise an alarm."""
    p95_latency_seconds: float = 20.0
    """Target response time p95 that raises an alarm."""
    p99_latency_seconds: float = 60.0
    """Target response time p99 that raises an alarm."""
    cpu_high_percent: int = 85
    """Service CPU % (after scaling) that raises an alarm."""
    memory_high_percent: int = 85
    """Service memory % that raises an alarm."""
    cache_cpu_percent: int = 80
    """The busiest cache node's engine CPU % that raises an alarm."""
    cache_memory_percent: int = 85
    """The busiest cache node's memory % that raises an alarm."""
    cache_evictions_per_5min: int = 100
    """Cache evictions per 5 minutes that raise an alarm."""
    cache_hit_rate_min_percent: int = 20
    """The gateway's hit ratio of cacheable requests under which an alarm fires."""
    waf_blocked_per_5min: int = 500
    """Requests WAF blocks per 5 minutes that raise an alarm."""
    ttft_p95_seconds: float = 10.0
    """The gateway's time to first token, streamed requests."""
    upstream_429_per_5min: int = 20
    """The LLM API refusing for rate limits, retries included."""
    cache_errors_per_5min: int = 10
    """Requests the gateway served without its cache."""
    spend_per_hour_usd: float = 10.0
    """The gateway's estimate of LLM spend, all clients."""


def problems(a: MonitoringArgs) -> list[tuple[str, str]]:
    """What would make alarms meaningless, as (argument, why)."""
    found = []
    if not 0 <= a.min_tasks <= a.max_tasks:
        found.append(("min_tasks", "0 to `max_tasks`: the alarm on too few tasks compares with it"))
    if any(v < 0 for v in vars(a.thresholds).values()):
        found.append(("thresholds", "thresholds are not negative"))
    bad = [u for u in a.upstreams if not UPSTREAM_NAME.fullmatch(u)]
    if bad or len(set(a.upstreams)) < len(a.upstreams):
        found.append(("upstreams", "unique names of a-z, 0-9 and -, up to 32 (they name alarms and a dimension)"))
    return found


@dataclass
class MonitoringArgs:
    name: str
    """The prefix of the topic, the alarms and the dashboard, e.g. llm-service-staging."""
    region: str
    """The region the dashboard's widgets read."""
    kms_key_arn: pulumi.Input[str]
    """The KMS key that encrypts the alarm topic."""
    lb_arn_suffix: pulumi.Input[str]
    """The ALB's ARN suffix, for its metrics."""
    target_group_arn_suffix: pulumi.Input[str]
    """The target group's ARN suffix, for its metrics."""
    cluster_name: pulumi.Input[str]
    """The ECS cluster, for Container Insights' metrics."""
    service_name: pulumi.Input[str]
    """The ECS service, for its CPU, memory and task count."""
    cache_member_ids: list[str]
    """The cache's node ids, for their CPU, memory and evictions."""
    web_acl_name: pulumi.Input[str]
    """The web ACL, for the requests it blocks."""
    min_tasks: int
    """The fewest tasks the service keeps: fewer running raises an alarm."""
    max_tasks: int
    """The most tasks autoscaling starts, drawn on the dashboard."""
    alert_emails: list[str] = field(default_factory=list)
    """Who gets the alarms (each confirms an SNS subscription)."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """What each alarm fires on (Thresholds, below)."""
    metrics_namespace: str = "LLMService"
    """The namespace the gateway writes its metrics to (Embedded Metric Format in its logs)."""
    gateway_service: pulumi.Input[str] = ""
    """The gateway's Service dimension (GATEWAY_SERVICE); "" leaves out the gateway's alarms and widgets."""
    upstreams: list[str] = field(default_factory=list)
    """The gateway's upstreams (`default` and llm.upstreams' names) when it routes: an alarm each when
    it stays cooled down, and widgets of their calls; [] (one upstream) adds neither."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"MonitoringArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


@dataclass
class _Alarm:
    name: str
    description: str
    namespace: str
    metric: str
    dimensions: dict[str, Any]
    comparison: str
    threshold: float
    stat: str = "Sum"
    period: int = 60
    periods: int = 3
    missing: str = "notBreaching"


def render_dashboard(**values: Any) -> str:
    """The dashboard body, checked to be JSON before it leaves here."""
    body = DASHBOARD.render(**values)
    return json.dumps(json.loads(body))


class Monitoring(pulumi.ComponentResource):
    topic_arn: pulumi.Output[str]
    """The SNS topic every alarm notifies."""
    dashboard_url: pulumi.Output[str]
    """The CloudWatch dashboard's address in the console."""
    alarm_names: list[pulumi.Output[str]]
    """The name of every alarm created."""

    def __init__(self, name: str, args: MonitoringArgs,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:monitoring:Monitoring", name, None, opts)
        p = pulumi.ResourceOptions(parent=self)
        ident = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        self.topic = aws.sns.Topic(f"{name}-alarms", name=f"{args.name}-alarms",
                                   kms_master_key_id=args.kms_key_arn, opts=p)
        aws.sns.TopicPolicy(
            f"{name}-alarms", arn=self.topic.arn,
            policy=pulumi.Output.all(self.topic.arn, ident.account_id).apply(
                lambda a: topic_policy(a[0], a[1])
            ),
            opts=p,
        )
        for i, email in enumerate(args.alert_emails):
            aws.sns.TopicSubscription(f"{name}-email-{i}", topic=self.topic.arn, protocol="email",
                                      endpoint=email, opts=p)
        self.alarm_names = [self._alarm(name, args.name, a) for a in alarms(args)]
        self.alarm_names += self._cache_alarms(name, args)
        self.alarm_names.append(self._hit_ratio_alarm(name, args))

        dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard", dashboard_name=args.name,
            dashboard_body=pulumi.Output.all(
                args.lb_arn_suffix, args.target_group_arn_suffix, args.cluster_name,
                args.service_name, args.web_acl_name, args.gateway_service,
            ).apply(lambda a: render_dashboard(
                region=args.region, lb=a[0], tg=a[1], cluster=a[2], service=a[3], web_acl=a[4],
                gateway=a[5], namespace=args.metrics_namespace,
                cache_members=args.cache_member_ids, min_tasks=args.min_tasks,
                max_tasks=args.max_tasks, p95=args.thresholds.p95_latency_seconds,
                p99=args.thresholds.p99_latency_seconds,
                ttft_p95_ms=args.thresholds.ttft_p95_seconds * 1000,
                spend_alarm=args.thresholds.spend_per_hour_usd, upstreams=args.upstreams,
            )),
            opts=p,
        )
        self.topic_arn = self.topic.arn
        self.dashboard_url = pulumi.Output.concat(
            f"https://{args.region}.console.aws.amazon.com/cloudwatch/home?region={args.region}"
            "#dashboards:name=", dashboard.dashboard_name,
        )
        self.register_outputs({"topic_arn": self.topic_arn, "dashboard_url": self.dashboard_url,
                               "alarm_names": self.alarm_names})

    def _alarm(self, name: str, prefix: str, a: _Alarm) -> pulumi.Output[str]:
        percentile = a.stat.startswith("p")
        alarm = aws.cloudwatch.MetricAlarm(
            f"{name}-{a.name}", name=f"{prefix}-{a.name}",
            alarm_description=a.description, namespace=a.namespace, metric_name=a.metric,
            dimensions=a.dimensions, statistic=None if percentile else a.stat,
            extended_statistic=a.stat if percentile else None, period=a.period,
            evaluation_periods=a.periods, datapoints_to_alarm=a.periods,
            comparison_operator=a.comparison, threshold=a.threshold,
            treat_missing_data=a.missing, alarm_actions=[self.topic.arn],
            ok_actions=[self.topic.arn], opts=pulumi.ResourceOptions(parent=self),
        )
        return alarm.name

    def _cache_alarms(self, name: str, args: MonitoringArgs) -> list[pulumi.Output[str]]:
        """One alarm per signal over every node: after a failover the primary moves."""
        t = args.thresholds
        specs = [
            ("cache-cpu", "EngineCPUUtilization", "Average", "MAX", 300, 3,
             "GreaterThanThreshold", t.cache_cpu_percent, "the cache engine is busy"),
            ("cache-memory", "DatabaseMemoryUsagePercentage", "Average", "MAX", 300, 3,
             "GreaterThanThreshold", t.cache_memory_percent, "the cache is nearly full"),
            ("cache-evictions", "Evictions", "Sum", "SUM", 300, 3,
             "GreaterThanThreshold", t.cache_evictions_per_5min,
             "the cache evicts answers faster than they are reused: size it up"),
        ]
        names = []
        for suffix, metric, stat, fn, period, periods, comparison, threshold, why in specs:
            queries = [aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id=f"m{i}", return_data=False,
                metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                    namespace="AWS/ElastiCache", metric_name=metric, stat=stat, period=period,
                    dimensions={"CacheClusterId": member},
                ),
            ) for i, member in enumerate(args.cache_member_ids)]
            ids = ", ".join(f"m{i}" for i in range(len(queries)))
            queries.append(aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id="e", expression=f"{fn}([{ids}])", label=f"{metric} over all nodes",
                return_data=True,
            ))
            alarm = aws.cloudwatch.MetricAlarm(
                f"{name}-{suffix}", name=f"{args.name}-{suffix}", alarm_description=why, metric_queries=queries,
                evaluation_periods=periods, datapoints_to_alarm=periods,
                comparison_operator=comparison, threshold=threshold,
                treat_missing_data="notBreaching", alarm_actions=[self.topic.arn],
                ok_actions=[self.topic.arn], opts=pulumi.ResourceOptions(parent=self),
            )
            names.append(alarm.name)
        return names


    def _hit_ratio_alarm(self, name: str, args: MonitoringArgs) -> pulumi.Output[str]:
        """The share of cacheable requests the gateway served from its cache, over an hour; an
        hour with fewer than 20 cacheable requests counts as fine (too few to judge)."""
        def metric(qid: str, metric_name: str) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
            return aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id=qid, return_data=False, metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                    namespace=args.metrics_namespace, metric_name=metric_name, stat="Sum", period=900,
                    dimensions={"Service": args.gateway_service}))
        ratio = aws.cloudwatch.MetricAlarmMetricQueryArgs(
            id="ratio", expression="IF(hits + misses >= 20, 100 * hits / (hits + misses), 100)",
            label="cache hit ratio (%)", return_data=True)
        alarm = aws.cloudwatch.MetricAlarm(
            f"{name}-cache-hit-rate-low", name=f"{args.name}-cache-hit-rate-low",
            alarm_description="few cacheable requests are served from the cache: check TTLs, keys, "
                              "and whether clients send what they used to",
            metric_queries=[metric("hits", "CacheHits"), metric("misses", "CacheMisses"), ratio],
            evaluation_periods=4, datapoints_to_alarm=4, comparison_operator="LessThanThreshold",
            threshold=args.thresholds.cache_hit_rate_min_percent, treat_missing_data="notBreaching",
            alarm_actions=[self.topic.arn], ok_actions=[self.topic.arn],
            opts=pulumi.ResourceOptions(parent=self),
        )
        return alarm.name


def alarms(args: MonitoringArgs) -> list[_Alarm]:
    t = args.thresholds
    lb = {"LoadBalancer": args.lb_arn_suffix}
    tg = {"LoadBalancer": args.lb_arn_suffix, "TargetGroup": args.target_group_arn_suffix}
    svc = {"ClusterName": args.cluster_name, "ServiceName": args.service_name}
    waf = {"WebACL": args.web_acl_name, "Region": args.region, "Rule": "ALL"}
    gw = {"Service": args.gateway_service}
    gt, lt = "GreaterThanThreshold", "LessThanThreshold"
    return [
        _Alarm("alb-5xx", "the load balancer itself answers 5xx (no healthy target, timeouts)",
               "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", lb, gt, t.alb_5xx_per_minute),
        _Alarm("target-5xx", "the service answers 5xx (LLM API errors surface here)",
               "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", tg, gt, t.target_5xx_per_minute),
        # LLM latency is seconds to minutes: thresholds in seconds, over 5-minute windows.
        _Alarm("latency-p95", "p95 response time is high", "AWS/ApplicationELB",
               "TargetResponseTime", tg, gt, t.p95_latency_seconds, stat="p95", period=300),
        _Alarm("latency-p99", "p99 response time is high", "AWS/ApplicationELB",
               "TargetResponseTime", tg, gt, t.p99_latency_seconds, stat="p99", period=300),
        _Alarm("unhealthy-hosts", "targets fail their health check", "AWS/ApplicationELB",
               "UnHealthyHostCount", tg, gt, 0, stat="Maximum"),
        # No data here means no task reports at all: that is the outage, so it breaches.
        _Alarm("tasks-below-minimum", "fewer tasks run than the configured minimum",
               "ECS/ContainerInsights", "RunningTaskCount", svc, lt, args.min_tasks,
               stat="Minimum", missing="breaching"),
        _Alarm("service-cpu", "service CPU is high even after scaling out", "AWS/ECS",
               "CPUUtilization", svc, gt, t.cpu_high_percent, stat="Average", period=300),
        _Alarm("service-memory", "service memory is high even after scaling out", "AWS/ECS",
               "MemoryUtilization", svc, gt, t.memory_high_percent, stat="Average", period=300),
        _Alarm("waf-blocked-spike", "WAF blocks many requests: an attack or a client bug",
               "AWS/WAFV2", "BlockedRequests", waf, gt, t.waf_blocked_per_5min, period=300,
               periods=1),
        # From the gateway's own metrics (EMF in its log lines), in milliseconds.
        _Alarm("gateway-ttft-p95", "streamed answers start slowly: the LLM API is slow or overloaded",
               args.metrics_namespace, "TimeToFirstToken", gw, gt, t.ttft_p95_seconds * 1000,
               stat="p95", period=300),
        _Alarm("gateway-upstream-429", "the LLM API refuses requests for rate limits: raise the "
               "project's limits or slow the clients", args.metrics_namespace, "Upstream429", gw, gt,
               t.upstream_429_per_5min, period=300, periods=1),
        _Alarm("gateway-cache-errors", "the gateway serves without its cache (Valkey does not answer): "
               "answers are not cached and client limits are not enforced", args.metrics_namespace,
               "CacheErrors", gw, gt, t.cache_errors_per_5min, period=300, periods=1),
        # An early warning, hours before the monthly budget or the provider's own limit.
        _Alarm("gateway-spend-per-hour", "estimated LLM spend in the last hour is above the threshold "
               "(USD): see the spend per client on the dashboard", args.metrics_namespace,
               "EstimatedCostUSD", gw, gt, t.spend_per_hour_usd, period=3600, periods=1),
        # Every task reports each upstream every 10 s: 1 while a target of it cools down or keeps
        # failing between cooldowns. Some task saw that in each of three 5-minute periods: it has
        # not recovered in 15 minutes (its requests go to the route's other targets meanwhile).
        *(_Alarm(f"upstream-{u}-cooling-down", f"upstream {u} has kept failing or cooling down for 15 minutes; "
                 "its requests go to the routes' other targets (see its errors and 429s on the dashboard)",
                 args.metrics_namespace, "UpstreamCoolingDown", {**gw, "Upstream": u},
                 "GreaterThanOrEqualToThreshold", 1, stat="Maximum", period=300) for u in args.upstreams),
    ]


def topic_policy(topic_arn: str, account: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AlarmsAndBudgetsPublish",
            "Effect": "Allow",
            "Principal": {"Service": ["cloudwatch.amazonaws.com", "budgets.amazonaws.com"]},
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": {"StringEquals": {"aws:SourceAccount": account}},
        }],
    })
