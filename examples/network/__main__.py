"""The network component alone: copy components/network.py here, then `pulumi up`."""

import pulumi
from network import Network, NetworkArgs

net = Network("network", NetworkArgs(cidr="10.40.0.0/16", az_count=2, region="eu-west-1"))
pulumi.export("privateSubnetIds", net.private_subnet_ids)
