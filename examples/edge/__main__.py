"""The edge component alone: copy components/edge.py here, then `pulumi up`."""

import pulumi
from edge import Edge, EdgeArgs

waf = Edge("edge", EdgeArgs(
    name="my-app",
    load_balancer_arn="arn:aws:elasticloadbalancing:eu-west-1:111122223333:loadbalancer/app/my-alb/0123456789abcdef"))
pulumi.export("webAclArn", waf.web_acl_arn)
