"""Run the policy pack over a synthesized stack, offline: no CLI, no credentials.

Each declared resource becomes a `pulumi_policy.ResourceValidationArgs` built from the inputs
the mocks captured (the same camelCase properties `pulumi preview` hands the pack), and the
stack policies see them all at once.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)

from infra import private_api
from infra.config import PROJECT
from offline.synth import Declared, Synthesis
from policy.policies import POLICIES


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str  # "<type> <name>", or "stack"
    message: str
    mandatory: bool

    def __str__(self) -> str:
        level = "mandatory" if self.mandatory else "advisory"
        return f"[{level}] {self.policy}: {self.resource}: {self.message}"


def urn(stack: str, d: Declared) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{d.type}::{d.name}"


def _options(d: Declared) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=d.protect, ignore_changes=list(d.ignore_changes), delete_before_replace=None,
        aliases=[], custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[],
    )


def _call(fn, *args) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        private_api.wait(result)


TEARDOWN_CONFIG = Path(__file__).resolve().parents[1] / "policy" / "teardown.json"


def levels_for(teardown: bool) -> dict[str, str]:
    """The enforcement levels `pulumi up --policy-pack-config` sets: policy/teardown.json's for
    the `up` before a destroy (make destroy-ready), none otherwise."""
    return json.loads(TEARDOWN_CONFIG.read_text()) if teardown else {}


def check(s: Synthesis, policies=POLICIES, levels: dict[str, str] | None = None) -> list[Violation]:
    """Every violation; `levels` (policy name -> mandatory, advisory or disabled) overrides a
    policy's own level as a policy pack config file does."""
    found: list[Violation] = []
    levels = levels or {}
    policies = [p for p in policies if levels.get(p.name) != "disabled"]
    resources = [d for d in s.resources if d.custom]
    by_urn = {urn(s.stack, d): d for d in resources}

    def reporter(policy, default: str):
        level = levels.get(policy.name) or policy.enforcement_level
        mandatory = level in (EnforcementLevel.MANDATORY, "mandatory")

        def report(message: str, at: str | None = None) -> None:
            d = by_urn.get(at) if at else None
            where = f"{d.type} {d.name}" if d else default
            found.append(Violation(policy.name, where, message, mandatory))
        return report

    for policy in policies:
        if isinstance(policy, ResourceValidationPolicy):
            for u, d in by_urn.items():
                args = ResourceValidationArgs(d.type, d.inputs, u, d.name, _options(d), None)
                for validate in _as_list(policy.validate):
                    _call(validate, args, reporter(policy, f"{d.type} {d.name}"))
        else:
            stack_resources = [
                PolicyResource(d.type, d.inputs, u, d.name, _options(d), None, None, [], {})
                for u, d in by_urn.items()
            ]
            _call(policy.validate, StackValidationArgs(stack_resources), reporter(policy, "stack"))
    return found


def _as_list(v):
    return v if isinstance(v, list) else [v]
