"""Each component's refusals, whole: the first and last values a bound admits and the first it
refuses, and each message as a fork's user reads it (the components sample's survivors asked)."""

from __future__ import annotations

import pytest

from components.cache import MAX_NODES, CacheArgs
from components.edge import EdgeArgs
from components.load_balancer import LoadBalancerArgs
from components.network import NetworkArgs
from components.secrets_store import SecretsArgs
from tests.test_component_args import CACHE, CERT, LB

SECRET = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:llm-service/prod/openai-api-key-AbC123"


def refused(build) -> str:
    with pytest.raises(ValueError) as e:
        build()
    return str(e.value)


def test_cache_nodes_and_port_at_each_bound():
    assert CacheArgs(**CACHE, nodes=MAX_NODES).nodes == MAX_NODES
    assert refused(lambda: CacheArgs(**CACHE, nodes=MAX_NODES + 1)) == \
        f"CacheArgs.nodes: got {MAX_NODES + 1}; 1 to {MAX_NODES}: a primary and up to 5 replicas"
    assert CacheArgs(**CACHE, port=1).port == 1 and CacheArgs(**CACHE, port=65535).port == 65535
    assert refused(lambda: CacheArgs(**CACHE, port=0)) == "CacheArgs.port: got 0; 1 to 65535"


def test_edge_names_the_windows_waf_takes():
    assert refused(lambda: EdgeArgs(name="a", load_balancer_arn="l", kms_key_arn="k", rate_window_seconds=30)) == \
        "EdgeArgs.rate_window_seconds: got 30; WAF evaluates 60, 120, 300 or 600 seconds"


def test_a_hosted_zone_without_a_domain_says_what_to_set():
    assert refused(lambda: LoadBalancerArgs(**LB, certificate_arn=CERT, hosted_zone_id="Z123")) == \
        ('LoadBalancerArgs.hosted_zone_id: got \'Z123\'; a zone without `domain_name` has nothing to hold; '
         'set `domain_name`, or "" here')


def test_network_cidr_refusals_whole():
    assert refused(lambda: NetworkArgs(region="eu-west-1", cidr="10.0.0.0/29", az_count=2)) == \
        "NetworkArgs.cidr: got '10.0.0.0/29'; a VPC is an IPv4 CIDR of /16 to /28"
    assert refused(lambda: NetworkArgs(region="eu-west-1", cidr="10.0.0.0/24", az_count=2,
                                       subnet_prefix_length=24)) == \
        ("NetworkArgs.cidr: got '10.0.0.0/24'; needs room for 3 tiers x 4 AZ slots = 12 subnets of /24; "
         "use a /20 or larger VPC, or a longer `subnet_prefix_length`")


def test_secrets_refusals_name_their_argument_and_bound():
    assert refused(lambda: SecretsArgs(prefix="p", region="eu-west-1", names=["a-key", "a-key"])) == \
        "SecretsArgs.names: got ['a-key', 'a-key']; names must be unique"
    assert SecretsArgs(prefix="p", region="eu-west-1", recovery_window_days=30).recovery_window_days == 30
    assert refused(lambda: SecretsArgs(prefix="p", region="eu-west-1", recovery_window_days=31)) == \
        "SecretsArgs.recovery_window_days: got 31; 0 (delete at once) or 7 to 30 days"
    line = refused(lambda: SecretsArgs(prefix="p", region="eu-west-1", adopt={"openai-api-key": SECRET[:-7]}))
    assert line.endswith("; the secret's full ARN (arn:aws:secretsmanager:<region>:<account>:secret:"
                         "<name>-<6 characters>)")
