"""The load balancer component alone: copy components/load_balancer.py here, then `pulumi up`."""

import pulumi
from load_balancer import LoadBalancer, LoadBalancerArgs

alb = LoadBalancer("alb", LoadBalancerArgs(
    vpc_id="vpc-0123456789abcdef0", subnet_ids=["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"],
    container_port=8080,
    certificate_arn="arn:aws:acm:eu-west-1:111122223333:certificate/5f0c2a3e-1b7d-4c9a-8e21-0a5b6c7d8e9f"))
pulumi.export("url", alb.url)
