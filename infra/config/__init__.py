"""The stack's config contract: one pydantic model, validated before any resource is declared.

Keys are written in the stack files as `llm-service:<section>` objects with camelCase fields
(`llm-service:service.maxTasks` in `pulumi config set --path` terms). Every failure becomes one
`ConfigError` whose message names the key as the user writes it, the value given, and what is
allowed. Defaults suit a small staging environment; prod must say more (`stack.PROD_RULES`).

One module per job:
    names.py     the names the stack gives what it creates; shapes of keys and ARNs
    errors.py    ConfigError and its one-line message; a component's refusals as config errors
    sections.py  one model per section; component_field (a setting declared with its component)
    stack.py     StackConfig: the sections, the rules across them, prod's rules, DELIBERATE_DEFAULTS
    messages.py  pydantic's errors reworded as ConfigErrors ("did you mean", prod's words)
    loading.py   load(): raw config in, StackConfig or every problem out; plain-text secrets refused
    examples.py  the shipped example values a real preview refuses
"""

from infra.config.errors import ConfigError, ConfigErrors, StackFileError, error_lines
from infra.config.examples import certificate_account_error, example_values
from infra.config.loading import load
from infra.config.names import (
    CACHE_AUTH_TOKEN,
    CLIENT_KEYS,
    GUARDDUTY_TAG,
    PROJECT,
    iam_path,
    physical_prefix,
    secret_prefix,
)
from infra.config.sections import (
    BUILD,
    LlmConfig,
    ServiceConfig,
    component_field,
    drain_seconds,
    stream_bound_seconds,
)
from infra.config.stack import DELIBERATE_DEFAULTS, PROD_RULES, StackConfig

__all__ = [
    "BUILD", "CACHE_AUTH_TOKEN", "CLIENT_KEYS", "DELIBERATE_DEFAULTS", "GUARDDUTY_TAG", "PROD_RULES", "PROJECT",
    "ConfigError", "ConfigErrors", "LlmConfig", "ServiceConfig", "StackConfig", "StackFileError",
    "certificate_account_error", "component_field", "drain_seconds", "error_lines", "example_values", "iam_path",
    "load", "physical_prefix", "secret_prefix", "stream_bound_seconds",
]
