"""The packages `make mutate` tests: the modules that carry the project's guarantees, each with the
tests that cover it. A package's score is the share of its non-equivalent mutants some test kills.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET = 0.90  # the least share of non-equivalent mutants killed, in each package


@dataclass(frozen=True)
class Package:
    name: str
    mutate: tuple[str, ...]  # globs of the files mutated
    tests: tuple[str, ...]  # the test files run against each mutant (only those that reach it)


PACKAGES = (
    Package(
        "gateway",
        ("gateway/*.py",),
        # Not test_gateway_contract.py: it runs the gateway's own venv as the task's user, which
        # has no mutmut to import the mutated modules with.
        ("tests/test_gateway_rules.py", "tests/test_store.py", "tests/test_gateway.py",
         "tests/test_gateway_adversary.py", "tests/test_gateway_accounting.py",
         "tests/test_gateway_cache.py", "tests/test_gateway_lifecycle.py", "tests/test_clientkeys.py",
         "tests/test_gateway_settings.py", "tests/test_routing.py", "tests/test_gateway_routing.py",
         "tests/test_gateway_partition.py"),
    ),
    Package(
        "config",
        ("infra/config/*.py", "infra/aws_rules.py"),
        ("tests/test_config.py", "tests/test_config_refusals.py", "tests/test_config_rules.py",
         "tests/test_lifecycle.py", "tests/test_real_run.py", "tests/test_config_doc.py",
         "tests/test_component_args.py", "tests/test_routing_stack.py"),
    ),
    Package(
        "components",
        ("components/secrets_store.py", "components/cache.py", "components/network.py",
         "components/load_balancer.py", "components/edge.py", "components/registry.py"),
        ("tests/test_component_args.py", "tests/test_config_rules.py", "tests/test_network.py",
         "tests/test_secrets.py", "tests/test_edge_monitoring.py", "tests/test_cache.py",
         "tests/test_lifecycle.py", "tests/test_service.py",
         # The stack contract refuses with the components' own messages, asserted whole there.
         "tests/test_config_refusals.py", "tests/test_component_problems.py"),
    ),
    Package(
        "ops",
        ("ops/*.py",),
        ("tests/test_apikey.py", "tests/test_clientkeys.py", "tests/test_cache_ops.py", "tests/test_ci_roles.py",
         "tests/test_rollout.py", "tests/test_verify.py", "tests/test_teardown.py", "tests/test_ops_boto.py"),
    ),
    Package(
        "offline",
        ("offline/cost.py", "offline/diff.py"),
        ("tests/test_cost.py", "tests/test_diff_plan.py", "tests/test_routing_stack.py"),
    ),
)

BY_NAME = {p.name: p for p in PACKAGES}
