"""What a real `pulumi preview`/`up` does that the offline plan does not: refuse the shipped example
values and a certificate of another account, before anything is declared.

The program runs through its real entry point (infra/__main__.py, as the Pulumi CLI runs it),
under Pulumi's mocks; the mocks' getCallerIdentity answers the deploying account.
"""

from __future__ import annotations

import runpy

import pulumi
import pytest

from infra.config import ConfigErrors
from infra.program import main
from infra.stack_files import ROOT
from offline import mocks
from offline.synth import synthesize
from tests.conftest import with_changes

OWN_ACCOUNT = "210987654321"
OWN_CERT = f"arn:aws:acm:us-east-1:{OWN_ACCOUNT}:certificate/0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


def real_entry_point() -> None:
    runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__")


def real(stack: str, raw=None, keys=None):
    return synthesize(stack, raw=raw, secret_keys=keys, program=lambda: main(offline=False))


EXAMPLES = {
    "staging": ["llm-service:loadBalancer.certificateArn", "llm-service:monitoring.alertEmails[0]"],
    "prod": ["llm-service:loadBalancer.certificateArn", "llm-service:monitoring.alertEmails[0]",
             "llm-service:monitoring.alertEmails[1]"],
}


def test_the_offline_plan_accepts_the_shipped_files(stack):
    assert stack.resources  # the session's synthesis of each shipped file (conftest.py)


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_a_real_run_refuses_each_example_value_in_one_line_and_declares_nothing(stack):
    with pytest.raises(pulumi.RunError) as err:
        synthesize(stack, program=real_entry_point)
    lines = str(err.value).splitlines()
    assert [line.split(": got ")[0] for line in lines] == [f"config error: {k}" for k in EXAMPLES[stack]]
    assert all("an example value from the shipped stack file; set " in line for line in lines)
    assert "Traceback" not in str(err.value)
    assert err.value.declared == []


def _own_values(stack: str):
    emails = ["oncall@acme-corp.io"]
    return with_changes(stack, loadBalancer__certificateArn=OWN_CERT, monitoring__alertEmails=emails)


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_a_real_run_with_own_values_in_its_own_account_declares_the_stack(stack, monkeypatch):
    monkeypatch.setattr(mocks, "ACCOUNT", OWN_ACCOUNT)
    s = real(stack, *_own_values(stack))
    (listener,) = s.of_type("aws:lb/listener:Listener")
    assert listener.inputs["certificateArn"] == OWN_CERT


def test_a_certificate_of_another_account_is_refused(monkeypatch):
    monkeypatch.setattr(mocks, "ACCOUNT", "333344445555")
    with pytest.raises(ConfigErrors) as err:
        real("staging", *_own_values("staging"))
    assert str(err.value) == (
        f"llm-service:loadBalancer.certificateArn: got '{OWN_CERT}'; the certificate is in account "
        f"{OWN_ACCOUNT}, the stack deploys to 333344445555: a load balancer uses certificates of "
        "its own account only")
    assert err.value.declared == []


DOMAIN = "set a domain you own, in the Route 53 zone hostedZoneId"
BASE_URL = "set the LLM API's base URL"
OWN = "replace it with your own"


@pytest.mark.parametrize("key,value,where,hint", [
    ("loadBalancer__domainName", "api.example.com", "loadBalancer.domainName", DOMAIN),
    ("llm__baseUrl", "https://llm.example.org/v1", "llm.baseUrl", BASE_URL),
    ("llm__orgId", "org-example", "llm.orgId",
     "set your organization id from the LLM provider's settings, or \"\" to send none"),
    ("tags", {"Owner": "ops@example.net"}, "tags.Owner", OWN),
    # Inside a longer value, in another letter case, in a list:
    ("llm__baseUrl", "https://LLM.EXAMPLE.COM/openai/v1", "llm.baseUrl", BASE_URL),
    ("tags", {"Team": "platform-Example-team"}, "tags.Team", OWN),
    ("tags", {"Billing": "arn:aws:iam::111122223333:role/billing"}, "tags.Billing", OWN),
    ("monitoring__alertEmails", ["oncall@acme.io", "Alerts@Example.Org"], "monitoring.alertEmails[1]",
     "set addresses someone reads: alarms and budget alerts go there"),
])
def test_other_example_values_are_refused_too(key, value, where, hint, monkeypatch):
    monkeypatch.setattr(mocks, "ACCOUNT", OWN_ACCOUNT)
    raw, keys = _own_values("staging")
    section, _, field = key.partition("__")
    if field:
        raw[f"llm-service:{section}"][field] = value
    else:
        raw[f"llm-service:{section}"] = value
    if key == "loadBalancer__domainName":
        raw["llm-service:loadBalancer"]["hostedZoneId"] = "Z0123456789ABCDEFGHIJ"
    with pytest.raises(ConfigErrors) as err:
        real("staging", raw, keys)
    leaf = value[1] if isinstance(value, list) else [*value.values()][0] if isinstance(value, dict) else value
    assert str(err.value) == (f"llm-service:{where}: got {leaf!r}; "
                              f"an example value from the shipped stack file; {hint}")
