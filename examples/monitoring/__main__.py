"""The monitoring component alone: copy components/monitoring.py here, then `pulumi up`."""

import pulumi
from monitoring import Monitoring, MonitoringArgs

mon = Monitoring("monitoring", MonitoringArgs(
    name="my-app", region="eu-west-1",
    kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
    lb_arn_suffix="app/my-alb/0123456789abcdef", target_group_arn_suffix="targetgroup/my-app/0123456789abcdef",
    cluster_name="my-app", service_name="my-app", cache_member_ids=["my-app-cache-001"],
    web_acl_name="my-app", min_tasks=1, max_tasks=4, alert_emails=["oncall@mycompany.com"]))
pulumi.export("dashboardUrl", mon.dashboard_url)
