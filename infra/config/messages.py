"""Pydantic's validation errors reworded as `ConfigError`s: the key as the stack file writes it
(aliases, list items as [i]), "did you mean" for a misspelt key at any depth, prod's own words
for a prod rule, and plain words for the common type and bound errors."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import (
    BaseModel,
)

from infra.config.errors import ConfigError, stack_key
from infra.config.names import PROJECT
from infra.config.stack import PROD_RULES, StackConfig

REQUIRED_HINTS = {
    f"{PROJECT}:loadBalancer": "required: say where the HTTPS certificate comes from "
                               "(certificateArn, or domainName with hostedZoneId)",
    f"{PROJECT}:environment": "required: staging or prod",
}


def _loc_to_key(loc: tuple) -> str:
    """A pydantic location as the key is written: section.field, list items as [i]."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return stack_key(key) if key else PROJECT


def _fields_at(loc: tuple) -> list[str]:
    """The keys a model accepts at a location (aliases as written in the stack file)."""
    model: Any = StackConfig
    for part in loc[:-1]:
        if typing.get_origin(model) is dict:  # `part` is a key of the mapping
            model = typing.get_args(model)[1]
        elif isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        else:
            field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def from_pydantic(err: dict, environment: Any) -> ConfigError:
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    key = _loc_to_key(err["loc"])
    value = err.get("input")
    short = key.removeprefix(f"{PROJECT}:")
    if environment == "prod" and short in PROD_RULES and not _passes(PROD_RULES[short][1], value):
        return ConfigError(key, value, PROD_RULES[short][2])
    if err["type"] == "missing":
        return ConfigError(key, None, REQUIRED_HINTS.get(key, "required"))
    if err["type"] == "extra_forbidden":
        name = str(err["loc"][-1])
        known = _fields_at(err["loc"])
        close = difflib.get_close_matches(name, known)  # the closest first
        hint = f"did you mean `{close[0]}`?" if close else "the keys here are " + ", ".join(known)
        return ConfigError(key, value, f"unknown key; {hint}")
    return ConfigError(key, value, _reworded(err))


# Pydantic's messages for the common cases, in the words of the rest of this module.
_WORDS = {
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string (quote it)",
    "list_type": "must be a list, e.g. [a, b]",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a section of keys (a mapping)",
    "too_short": "must have at least {min_length} item(s)",
    "string_pattern_mismatch": "does not match {pattern} (visible ASCII, no spaces)",
    "literal_error": "allowed: {expected}",
}


def _reworded(err: dict) -> str:
    words = _WORDS.get(err["type"])
    if words:
        try:
            return words.format(**(err.get("ctx") or {}))
        except KeyError:
            pass
    return err["msg"].removeprefix("Value error, ")


def _passes(rule: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(rule(value))
    except TypeError:  # not even the right type: the generic message says what is
        return True


def merge_misspelt(errors: list[ConfigError]) -> list[ConfigError]:
    """A misspelt required key shows as unknown and missing: keep the one that names both."""
    meant = {e.allowed.split("`")[1] for e in errors
             if e.allowed.startswith("unknown key; did you mean `")}
    return [e for e in errors if not (e.value is None and re.split(r"[.:]", e.key)[-1] in meant
                                      and e.allowed.startswith("required"))]
