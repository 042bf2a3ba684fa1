"""The service component alone: copy components/service.py here, then `pulumi up`."""

import pulumi
from service import Service, ServiceArgs

svc = Service("service", ServiceArgs(
    name="my-app", region="eu-west-1", vpc_id="vpc-0123456789abcdef0",
    subnet_ids=["subnet-0ccccccccccccccc0", "subnet-0dddddddddddddddd"],
    image="111122223333.dkr.ecr.eu-west-1.amazonaws.com/my-app@sha256:" + "0" * 64,
    lb_security_group_id="sg-0123456789abcdef0",
    target_group_arn="arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/my-app/0123456789abcdef",
    request_count_label="app/my-alb/0123456789abcdef/targetgroup/my-app/0123456789abcdef",
    kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"))
pulumi.export("serviceName", svc.service_name)
