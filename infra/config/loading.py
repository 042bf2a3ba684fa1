"""`load`: raw config in, a checked `StackConfig` out or every problem at once, secrets refused
where they sit in plain text."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import (
    ValidationError,
)

from infra.config.errors import ConfigError, ConfigErrors
from infra.config.messages import from_pydantic, merge_misspelt
from infra.config.names import KEY_PATTERN, PROJECT
from infra.config.sections import SecretsConfig
from infra.config.stack import StackConfig


def load(raw: dict[str, Any], secret_keys: set[str] = frozenset()) -> StackConfig:
    """Validate a stack's raw config.

    `raw` maps config keys as Pulumi gives them (`aws:region`, `llm-service:service`, ...) to values,
    with objects already parsed. `secret_keys` names the keys that are stored encrypted.
    Raises ConfigError (one problem) or ConfigErrors (several, one line each).
    """
    _refuse_plain_secrets(raw, secret_keys)
    _refuse_misspelt_namespaces(raw)
    data: dict[str, Any] = {}
    for full, value in raw.items():
        ns, _, name = full.partition(":")
        if full == "aws:region":
            data[full] = value
        elif ns == PROJECT and name not in _secret_value_names(raw):
            data[name] = value
    try:
        cfg = StackConfig.model_validate(data)
    except ValidationError as e:
        errors: list[ConfigError] = []
        for err in e.errors():
            errors += from_pydantic(err, data.get("environment")).errors
        errors = merge_misspelt(errors)
        raise ConfigErrors(errors) from None  # one line each; one error reads as that error
    _check_secret_values(cfg, raw, secret_keys)
    return cfg


def _refuse_misspelt_namespaces(raw: dict[str, Any]) -> None:
    """Keys of other namespaces belong to other plugins (aws:profile, pulumi:...) and are passed
    by; one that is nearly this project's name is a typo whose whole section would be ignored."""
    for key in raw:
        ns, _, name = key.partition(":")
        if ns != PROJECT and difflib.SequenceMatcher(None, ns, PROJECT).ratio() >= 0.8:
            raise ConfigError(key, raw[key], f"unknown namespace {ns!r}; did you mean `{PROJECT}:{name}`?")


def _secret_value_names(raw: dict[str, Any]) -> set[str]:
    """Secret values live in top-level keys named after the secret (`llm-service:openai-api-key`)."""
    section = raw.get(f"{PROJECT}:secrets")
    names = section.get("names") if isinstance(section, dict) else None
    if not isinstance(names, list) or not names:  # the model then says what is wrong with it
        names = SecretsConfig().names
    return {n for n in names if isinstance(n, str)}


def _refuse_plain_secrets(raw: dict[str, Any], secret_keys: set[str]) -> None:
    for key, value in raw.items():
        if key in secret_keys:
            continue
        for path, leaf in leaves(key, value):
            if isinstance(leaf, str) and KEY_PATTERN.search(leaf):
                raise ConfigError(
                    path, "sk-…(redacted)",
                    "an API key may not be stored in plain text; use "
                    "`python -m ops.apikey put` (external) or `pulumi config set --secret`",
                )


def _check_secret_values(cfg: StackConfig, raw: dict[str, Any], secret_keys: set[str]) -> None:
    for name in cfg.secrets.names:
        key = f"{PROJECT}:{name}"
        if key not in raw:
            if cfg.secrets.source == "pulumi":
                raise ConfigError(
                    key, None,
                    f"secrets.source is pulumi: run `pulumi config set --secret {name} <value>`",
                )
            continue
        if key not in secret_keys:
            raise ConfigError(
                key, "(redacted)",
                f"stored in plain text; run `pulumi config set --secret {name}` to encrypt it",
            )
        if cfg.secrets.source == "external":
            raise ConfigError(
                key, "(secret)",
                "secrets.source is external, so the value must not be in Pulumi config; "
                "remove it or set secrets.source to pulumi",
            )


def leaves(path: str, value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(f"{path}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(f"{path}[{i}]", v)
    else:
        yield path, value


# --- example values ------------------------------------------------------------------------------
# The shipped stack files carry example values so that the offline plan runs as they are. A real
# preview or up refuses them before anything is declared: each would fail minutes into a deploy
# (a certificate in a placeholder account) or fail silently (alerts to a domain nobody reads).
