"""The gateway's settings, read once from the environment the task definition declares.

`Settings` holds each setting's default (one that suits a local run; only the LLM key has none);
`VARIABLES` maps each environment variable to its field, parser and allowed values, and is the
only reader (`cachectl` uses it too). A bad value stops the process at start-up with one line
naming the variable (`SettingsError`), before it listens.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, TypeVar

import orjson

from gateway.keys import ClientKeys, KeyDocumentError, add_key, empty_document
from gateway.limits import Limits, Prices
from gateway.routing import AUTHS, Route, RoutesError, UpstreamSpec, parse_routes
from gateway.routing import DEFAULT as DEFAULT_UPSTREAM

T = TypeVar("T")


class SettingsError(ValueError):
    """One line: the variable, the value and what is allowed."""


@dataclass(frozen=True)
class Settings:
    api_key: str = field(repr=False)
    clients: ClientKeys = field(repr=False)
    base_url: str = "https://api.openai.com/v1"
    org_id: str = ""
    project_id: str = ""
    host: str = "0.0.0.0"  # noqa: S104 - the task's own interface; the security group guards it
    port: int = 8080
    workers: int = 1
    # Streams: an SSE comment this often while the upstream is silent, so the load balancer's
    # idle timeout never cuts a stream; TCP keepalive on upstream sockets under the NAT
    # gateway's 350 s idle timeout. The stack derives both from its config.
    sse_keepalive_seconds: float = 15.0
    tcp_keepalive_seconds: int = 60
    # Retries of 429, 5xx and connection errors, before the first byte reaches the client.
    max_attempts: int = 3
    retry_budget_seconds: float = 20.0
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 600.0  # longest silence from the upstream before giving up
    max_request_bytes: int = 8 * 1024 * 1024
    body_timeout_seconds: float = 30.0  # a request body that takes longer to arrive is refused (408)
    max_in_flight: int = 1000  # requests one worker serves at once; beyond, a 503 to retry
    # After SIGTERM, how long streams in flight may run on: a task's default stop timeout less 5.
    drain_seconds: float = 115.0
    # After SIGTERM, accept until no request has come for this long (the load balancer checks a
    # registered target every health-check interval: once it is quiet, nothing more will come).
    drain_quiet_seconds: float = 20.0
    # ...and for at most this long, even if it still sends: by then the load balancer has taken a
    # target whose health checks fail out of rotation (what still comes is only those checks).
    drain_accept_seconds: float = 50.0
    # Longer than the load balancer's idle timeout: a target that closes a kept-alive connection
    # first makes the ALB answer 502 (AWS's ALB troubleshooting guide).
    client_keepalive_seconds: int = 620
    log_prompts: bool = False
    service: str = "llm-service-local"  # the metrics' Service dimension
    namespace: str = "LLMService"
    environment: str = "local"
    # The cache and the limits (gateway/store.py): Valkey when CACHE_HOST is set, else this process.
    cache_host: str = ""
    cache_reader_host: str = ""
    cache_port: int = 6379
    cache_tls: bool = True
    cache_auth_token: str = field(default="", repr=False)
    cache_ca_file: str = ""  # only where the server's CA is not in the system's bundle (tests)
    cache_timeout_seconds: float = 0.25  # a command's budget
    cache_connect_timeout_seconds: float = 1.0  # a new connection's (TLS handshake included)
    cache_ttl_seconds: int = 3600
    # Larger answers are not cached: one huge write would hold the store (and every client's
    # limits) past its timeout.
    cache_max_entry_bytes: int = 1024 * 1024
    coalesce_wait_seconds: float = 30.0
    default_limits: Limits = Limits()
    prices: Prices = field(default_factory=lambda: Prices(None))  # None: no model list (a local run)
    output_tokens_estimate: int = 1000
    # More upstreams than the default one, and the routes of the models clients call
    # (gateway/routing.py); none: every model goes to OPENAI_BASE_URL under its own name.
    extra_upstreams: Mapping[str, UpstreamSpec] = field(default_factory=dict, repr=False)
    routes: Mapping[str, Route] = field(default_factory=dict)
    cooldown_seconds: float = 30.0
    cooldown_after: int = 3  # failures in a row that cool an upstream down

    @cached_property
    def upstreams(self) -> dict[str, UpstreamSpec]:
        default = UpstreamSpec(DEFAULT_UPSTREAM, self.base_url, self.api_key, org_id=self.org_id,
                               project_id=self.project_id)
        return {DEFAULT_UPSTREAM: default, **self.extra_upstreams}

    @property
    def routed(self) -> bool:
        """More than one upstream, or routes: per-upstream metrics and shared cooldowns are worth it."""
        return bool(self.extra_upstreams or self.routes)


# The defaults, for reading them (cachectl): no key, no clients.
DEFAULT = Settings(api_key="", clients=ClientKeys(empty_document()))


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if value <= 0:  # type: ignore[operator]
            raise ValueError
        return value
    return parse


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ValueError


def _text(raw: str) -> str:
    return raw


def _base_url(raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise ValueError
    if "@" in urllib.parse.urlsplit(raw).netloc:
        raise SettingsError("OPENAI_BASE_URL carries credentials (user:password@): the key goes in "
                            "OPENAI_API_KEY, never in a URL that lands in logs and errors")
    return raw


def _limits(raw: str) -> Limits:
    try:
        return Limits.from_json(orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError, AttributeError) as e:
        raise ValueError(str(e)) from None


def _prices(raw: str) -> Prices:
    try:
        return Prices.from_json(raw)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(str(e)) from None


UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def _upstreams(raw: str) -> dict[str, UpstreamSpec]:
    """GATEWAY_UPSTREAMS: {"backup": {"baseUrl": ..., "auth": "bearer", "orgId": "", "projectId": "",
    "keyVariable": "BACKUP_OPENAI_KEY"}}; each key is read from its variable by `from_env`."""
    try:
        doc = orjson.loads(raw)
        # First, before any refusal that would show the whole value: no URL carries credentials.
        for name, u in doc.items():
            if "@" in urllib.parse.urlsplit(str(u.get("baseUrl", ""))).netloc:
                raise SettingsError(f"GATEWAY_UPSTREAMS: upstream {name!r} has a baseUrl that carries credentials "
                                    "(user:password@): its key goes in its own secret, never in a URL")
        specs = {}
        for name, u in doc.items():
            spec = UpstreamSpec(name, _base_url(u["baseUrl"]), "", u.get("auth", "bearer"), u.get("orgId", ""),
                                u.get("projectId", ""), u["keyVariable"])
            if not UPSTREAM_NAME.fullmatch(name) or name == DEFAULT_UPSTREAM or spec.auth not in AUTHS \
                    or not ENV_NAME.fullmatch(spec.key_variable):
                raise ValueError
            specs[name] = spec
        return specs
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(str(e)) from None


def _routes(raw: str) -> dict[str, Any]:
    doc = orjson.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError
    return doc  # checked against the upstreams by `from_env`


@dataclass(frozen=True)
class Variable:
    """One environment variable: the Settings field it sets (whose default applies when it is
    unset or empty), how its text is parsed, and what the error line says is allowed."""

    name: str
    field: str
    parse: Callable[[str], Any]
    allowed: str


_pos_f, _pos_i = _positive(float), _positive(int)
SECONDS, WHOLE_SECONDS, SECONDS_OR_0 = "seconds > 0", "whole seconds > 0", "seconds >= 0"
LIMITS_JSON = 'JSON such as {"requestsPerMinute": 600, "tokensPerMinute": 200000, "usdPerDay": 50}'
UPSTREAMS_JSON = ('JSON such as {"backup": {"baseUrl": "https://...", "auth": "bearer or api-key", '
                  '"keyVariable": "BACKUP_OPENAI_KEY"}} (names: a-z, 0-9 and -, not "default")')
ROUTES_JSON = 'JSON such as {"chat-default": [{"upstream": "default", "model": "gpt-4o-mini", "weight": 1}]}'
PRICES_JSON = 'JSON such as {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}}'

# Every variable the gateway reads besides the LLM key and the client keys (OPENAI_API_KEY,
# CLIENT_KEYS; CACHE_AUTH_TOKEN, the third secret, is read here too), by `from_env` and by
# `cachectl` alike; the task definition's environment is checked against it
# (tests/test_gateway_settings.py).
VARIABLES = (
    Variable("OPENAI_BASE_URL", "base_url", _base_url, "an http(s) URL such as https://api.openai.com/v1"),
    Variable("OPENAI_ORG_ID", "org_id", _text, "an OpenAI organization id"),
    Variable("OPENAI_PROJECT_ID", "project_id", _text, "an OpenAI project id"),
    Variable("HOST", "host", _text, "an address to listen on"),
    Variable("PORT", "port", _pos_i, "a port number, 1 to 65535"),
    Variable("APP_ENV", "environment", _text, "the stack's environment"),
    Variable("GATEWAY_WORKERS", "workers", _pos_i, "a positive number of processes"),
    Variable("GATEWAY_SSE_KEEPALIVE_SECONDS", "sse_keepalive_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_TCP_KEEPALIVE_SECONDS", "tcp_keepalive_seconds", _pos_i, WHOLE_SECONDS),
    Variable("GATEWAY_MAX_ATTEMPTS", "max_attempts", _pos_i, "attempts >= 1"),
    Variable("GATEWAY_RETRY_BUDGET_SECONDS", "retry_budget_seconds", float, SECONDS_OR_0),
    Variable("GATEWAY_BACKOFF_BASE_SECONDS", "backoff_base_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_BACKOFF_MAX_SECONDS", "backoff_max_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_CONNECT_TIMEOUT_SECONDS", "connect_timeout_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_READ_TIMEOUT_SECONDS", "read_timeout_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_MAX_REQUEST_BYTES", "max_request_bytes", _pos_i, "bytes > 0"),
    Variable("GATEWAY_BODY_TIMEOUT_SECONDS", "body_timeout_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_MAX_IN_FLIGHT", "max_in_flight", _pos_i, "requests > 0"),
    Variable("GATEWAY_DRAIN_SECONDS", "drain_seconds", float, SECONDS_OR_0),
    Variable("GATEWAY_DRAIN_QUIET_SECONDS", "drain_quiet_seconds", float, SECONDS_OR_0),
    Variable("GATEWAY_DRAIN_ACCEPT_SECONDS", "drain_accept_seconds", float, SECONDS_OR_0),
    Variable("GATEWAY_CLIENT_KEEPALIVE_SECONDS", "client_keepalive_seconds", _pos_i, WHOLE_SECONDS),
    Variable("GATEWAY_LOG_PROMPTS", "log_prompts", _bool, "true or false"),
    Variable("GATEWAY_SERVICE", "service", _text, "the service's name"),
    Variable("GATEWAY_METRICS_NAMESPACE", "namespace", _text, "a CloudWatch namespace"),
    Variable("CACHE_HOST", "cache_host", _text, "the cache's primary endpoint"),
    Variable("CACHE_READER_HOST", "cache_reader_host", _text, "the cache's reader endpoint"),
    Variable("CACHE_PORT", "cache_port", _pos_i, "a port number"),
    Variable("CACHE_TLS", "cache_tls", _bool, "true or false"),
    Variable("CACHE_AUTH_TOKEN", "cache_auth_token", _text, "the cache's AUTH token"),
    Variable("CACHE_TLS_CA_FILE", "cache_ca_file", _text, "a file of CA certificates"),
    Variable("GATEWAY_CACHE_TIMEOUT_SECONDS", "cache_timeout_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_CACHE_CONNECT_TIMEOUT_SECONDS", "cache_connect_timeout_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_CACHE_TTL_SECONDS", "cache_ttl_seconds", _pos_i, WHOLE_SECONDS),
    Variable("GATEWAY_CACHE_MAX_ENTRY_BYTES", "cache_max_entry_bytes", _pos_i, "bytes > 0"),
    Variable("GATEWAY_COALESCE_WAIT_SECONDS", "coalesce_wait_seconds", float, SECONDS_OR_0),
    Variable("GATEWAY_DEFAULT_LIMITS", "default_limits", _limits, LIMITS_JSON),
    Variable("GATEWAY_PRICES", "prices", _prices, PRICES_JSON),
    Variable("GATEWAY_OUTPUT_TOKENS_ESTIMATE", "output_tokens_estimate", _pos_i, "tokens > 0"),
    Variable("GATEWAY_UPSTREAMS", "extra_upstreams", _upstreams, UPSTREAMS_JSON),
    Variable("GATEWAY_ROUTES", "routes", _routes, ROUTES_JSON),
    Variable("GATEWAY_UPSTREAM_COOLDOWN_SECONDS", "cooldown_seconds", _pos_f, SECONDS),
    Variable("GATEWAY_UPSTREAM_COOLDOWN_AFTER", "cooldown_after", _pos_i, "failures >= 1"),
)
BY_FIELD = {v.field: v for v in VARIABLES}
SECRETS = ("OPENAI_API_KEY", "CLIENT_KEYS", "CACHE_AUTH_TOKEN")  # injected from Secrets Manager


def read(env: Mapping[str, str], fields: Iterable[str] = BY_FIELD) -> dict[str, Any]:
    """The Settings fields these variables set, parsed; a variable unset or empty is left out
    (its field keeps the default)."""
    values = {}
    for name in fields:
        var = BY_FIELD[name]
        raw = env.get(var.name)
        if raw is None or raw == "":
            continue
        try:
            values[name] = var.parse(raw)
        except SettingsError:
            raise
        except ValueError:
            raise SettingsError(f"{var.name}={raw!r}: {var.allowed}") from None
    return values


def from_env(env: Mapping[str, str] = os.environ, log: Callable[[str], None] = print) -> Settings:
    api_key = env.get("OPENAI_API_KEY", "")
    if not api_key.strip():
        raise SettingsError("OPENAI_API_KEY is not set: the gateway holds the LLM key, clients never do")
    values = read(env)
    clients = _clients(env, values.get("host", DEFAULT.host), log)
    extra = values["extra_upstreams"] = _with_keys(values.get("extra_upstreams", {}), env)
    try:
        values["routes"] = parse_routes(values.get("routes", {}), {DEFAULT_UPSTREAM: None, **extra})
    except (RoutesError, KeyError, TypeError, ValueError) as e:
        raise SettingsError(f"GATEWAY_ROUTES: {e}") from None
    return Settings(api_key=api_key.strip(), clients=clients, **values)


def _with_keys(specs: Mapping[str, UpstreamSpec], env: Mapping[str, str]) -> dict[str, UpstreamSpec]:
    """Each extra upstream with its key, from the variable its secret is injected as."""
    out = {}
    for name, spec in specs.items():
        key = env.get(spec.key_variable, "").strip()
        if not key:
            raise SettingsError(f"GATEWAY_UPSTREAMS: upstream {name!r} reads its key from {spec.key_variable}, "
                                "which is not set (its secret: python -m ops.apikey put --name <secret>)")
        out[name] = replace(spec, key=key)
    return out


def _clients(env: Mapping[str, str], host: str, log: Callable[[str], None]) -> ClientKeys:
    raw = env.get("CLIENT_KEYS")
    if raw:
        try:
            return ClientKeys.from_json(raw)
        except KeyDocumentError as e:
            raise SettingsError(f"CLIENT_KEYS: {e}") from None
    if not _loopback(host):
        raise SettingsError("CLIENT_KEYS is not set: run `python -m ops.clientkeys add <client>`; "
                            "only a gateway bound to 127.0.0.1 makes itself a local key")
    # A local run (`make serve`): one key for this process, shown once.
    doc = empty_document()
    key = add_key(doc, "local")
    log(f"local client key (this run only): {key}")
    return ClientKeys(doc)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_or_exit() -> Settings:
    try:
        return from_env(log=lambda line: print(line, file=sys.stderr, flush=True))
    except SettingsError as e:
        print(f"gateway: {e}", file=sys.stderr)
        raise SystemExit(2) from None
