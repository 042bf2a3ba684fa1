"""The example values the shipped stack files carry: a real preview or up refuses each, and a
certificate of another account."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from infra.config.errors import ConfigError, stack_key
from infra.config.loading import leaves
from infra.config.names import CERTIFICATE_ARN, PROJECT

if TYPE_CHECKING:
    from infra.config.stack import StackConfig

# Account ids AWS documentation uses in examples (never a real account).
EXAMPLE_ACCOUNTS = {"123456789012", "111122223333", "444455556666", "000000000000"}
# RFC 2606 / RFC 6761 names reserved for documentation and testing.
EXAMPLE_DOMAIN = re.compile(
    r"(^|[.@/])(example\.(com|net|org)|[a-z0-9-]+\.(example|test|invalid|localhost))(\b|$)", re.I)
EXAMPLE_WORD = re.compile(r"(^|[-_])example($|[-_])", re.I)
_SET_INSTEAD = {
    "loadBalancer.certificateArn": "set the ARN of your ACM certificate in this region "
                                   "(`aws acm list-certificates`), or domainName with hostedZoneId",
    "loadBalancer.domainName": "set a domain you own, in the Route 53 zone hostedZoneId",
    "monitoring.alertEmails": "set addresses someone reads: alarms and budget alerts go there",
    "llm.orgId": "set your organization id from the LLM provider's settings, or \"\" to send none",
    "llm.projectId": "set the project id of this stack's LLM-API project, or \"\" to send none",
    "llm.baseUrl": "set the LLM API's base URL",
}


def example_values(raw: dict[str, Any]) -> list[ConfigError]:
    """Every example value in a stack's raw config, one error each, keyed as written."""
    found = []
    for key, value in raw.items():
        for path, leaf in leaves(key, value):
            if isinstance(leaf, str) and _is_example(leaf):
                short = re.sub(r"\[\d+\]$", "", path.removeprefix(f"{PROJECT}:"))
                found.append(ConfigError(path, leaf, "an example value from the shipped stack file; "
                                         + _SET_INSTEAD.get(short, "replace it with your own")))
    return found


def _is_example(text: str) -> bool:
    accounts = re.findall(r"(?<!\d)\d{12}(?!\d)", text)
    return (any(a in EXAMPLE_ACCOUNTS for a in accounts) or bool(EXAMPLE_DOMAIN.search(text))
            or bool(EXAMPLE_WORD.search(text)))


def certificate_account_error(cfg: StackConfig, account: str) -> Optional[ConfigError]:
    """A listener can only use a certificate of the load balancer's own account."""
    m = CERTIFICATE_ARN.fullmatch(cfg.load_balancer.certificate_arn)
    if m and m["account"] != account and m["account"] not in EXAMPLE_ACCOUNTS:
        return ConfigError(
            stack_key("loadBalancer.certificateArn"), cfg.load_balancer.certificate_arn,
            f"the certificate is in account {m['account']}, the stack deploys to {account}: "
            "a load balancer uses certificates of its own account only",
        )
    return None
