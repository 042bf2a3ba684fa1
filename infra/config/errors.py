"""The one-line config errors: `ConfigError` (the key as the stack file writes it, the value given,
what is allowed), values shown redacted where they look secret, and a component's own refusals
keyed as the stack file writes them."""

from __future__ import annotations

import re
from typing import Any

from infra.config.names import KEY_PATTERN, PROJECT, stack_name


class ConfigError(ValueError):
    """Bad stack config: one line naming the key as written, the value given and what is allowed.

    A ValueError, so that raised inside a validator pydantic carries it to `load` whole."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: got {shown(key, value)}; {allowed}")

    @property
    def errors(self) -> list[ConfigError]:
        return [self]


class StackFileError(ConfigError):
    """A stack file that is not readable YAML: the file, line and column, then what is wrong."""

    def __init__(self, where: str, problem: str):
        self.key, self.value, self.allowed = where, None, problem
        Exception.__init__(self, f"{where}: {problem}")


# Keys whose values are never echoed: authToken, password, openai-api-key (not tokensPerMinute).
SECRET_WORDS = re.compile(r"(token|password|secret|api[-_]?key)$", re.I)


def shown(key: str, value: Any) -> str:
    """A value as a message shows it: redacted where it looks secret, sections never dumped."""
    if isinstance(value, str) and (KEY_PATTERN.search(value) or SECRET_WORDS.search(key)):  # the key's last word
        return "'(redacted)'"
    if isinstance(value, dict):
        return "a section {…}" if value else "{}"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "…"


def stack_key(path: str) -> str:
    """The key as the stack file writes it: the project's namespace unless the path has its own
    (`aws:region`); a colon later in a path (`service:cpu`, a misspelt key) is the key's own."""
    return path if path.startswith(("aws:", f"{PROJECT}:")) else f"{PROJECT}:{path}"


def refuse(section: str, values: Any, found: list[tuple[str, str]]) -> None:
    """A component's own refusals (argument, why), as config errors keyed as the stack file
    writes them: the rule lives once, with the component, and a fork of it has it too."""
    errors = []
    for arg, why in found:
        name, _, index = arg.partition("[")
        value, index = getattr(values, name), index.removesuffix("]")
        suffix = ""
        if index:
            value = value[int(index)] if index.isdigit() else value[index]
            suffix = f"[{index}]" if index.isdigit() else f".{index}"  # a list's item, a map's key
        why = re.sub(r"`([a-z0-9_]+)`", lambda m: f"{section}.{stack_name(m[1])}", why)
        errors.append(ConfigError(stack_key(f"{section}.{stack_name(name)}{suffix}"), value, why))
    if errors:
        raise ConfigErrors(errors)  # one line each; one error reads as that error




def error_lines(e: ConfigError) -> str:
    """What every command prints for a config error (and exits 2): one line per problem."""
    return "\n".join(f"config error: {one}" for one in e.errors)


class ConfigErrors(ConfigError):
    """Several config errors at once, one line each."""

    def __init__(self, errors: list[ConfigError]):
        self._errors = [one for e in errors for one in e.errors]
        first = self._errors[0]
        Exception.__init__(self, "\n".join(str(e) for e in self._errors))
        self.key, self.value, self.allowed = first.key, first.value, first.allowed

    @property
    def errors(self) -> list[ConfigError]:
        return self._errors
