"""The gateway's settings, read once from the environment the task definition declares.

Every variable has a default that suits a local run except the LLM key. A bad value stops the
process at start-up with one line naming the variable (`SettingsError`), before it listens.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import orjson

from gateway.keys import ClientKeys, KeyDocumentError, add_key, empty_document
from gateway.limits import Limits, Prices

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
    drain_seconds: float = 110.0  # after SIGTERM, how long streams in flight may run on
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

    @property
    def upstream(self) -> str:
        return self.base_url.rstrip("/")


def _get(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], allowed: str) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: {allowed}") from None


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


def from_env(env: Mapping[str, str] = os.environ, log: Callable[[str], None] = print) -> Settings:
    api_key = env.get("OPENAI_API_KEY", "")
    if not api_key.strip():
        raise SettingsError("OPENAI_API_KEY is not set: the gateway holds the LLM key, clients never do")
    host = env.get("HOST", "0.0.0.0")  # noqa: S104
    clients = _clients(env, host, log)
    base_url = env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    if not base_url.startswith(("https://", "http://")):
        raise SettingsError(f"OPENAI_BASE_URL={base_url!r}: an http(s) URL such as https://api.openai.com/v1")
    if "@" in urllib.parse.urlsplit(base_url).netloc:
        raise SettingsError("OPENAI_BASE_URL carries credentials (user:password@): the key goes in "
                            "OPENAI_API_KEY, never in a URL that lands in logs and errors")
    num, pos_f, pos_i = float, _positive(float), _positive(int)
    return Settings(
        api_key=api_key.strip(), clients=clients, base_url=base_url,
        org_id=env.get("OPENAI_ORG_ID", ""), project_id=env.get("OPENAI_PROJECT_ID", ""),
        host=host,
        port=_get(env, "PORT", 8080, pos_i, "a port number, 1 to 65535"),
        workers=_get(env, "GATEWAY_WORKERS", 1, pos_i, "a positive number of processes"),
        sse_keepalive_seconds=_get(env, "GATEWAY_SSE_KEEPALIVE_SECONDS", 15.0, pos_f, "seconds > 0"),
        tcp_keepalive_seconds=_get(env, "GATEWAY_TCP_KEEPALIVE_SECONDS", 60, pos_i, "whole seconds > 0"),
        max_attempts=_get(env, "GATEWAY_MAX_ATTEMPTS", 3, pos_i, "attempts >= 1"),
        retry_budget_seconds=_get(env, "GATEWAY_RETRY_BUDGET_SECONDS", 20.0, num, "seconds >= 0"),
        backoff_base_seconds=_get(env, "GATEWAY_BACKOFF_BASE_SECONDS", 0.5, pos_f, "seconds > 0"),
        backoff_max_seconds=_get(env, "GATEWAY_BACKOFF_MAX_SECONDS", 8.0, pos_f, "seconds > 0"),
        connect_timeout_seconds=_get(env, "GATEWAY_CONNECT_TIMEOUT_SECONDS", 5.0, pos_f, "seconds > 0"),
        read_timeout_seconds=_get(env, "GATEWAY_READ_TIMEOUT_SECONDS", 600.0, pos_f, "seconds > 0"),
        max_request_bytes=_get(env, "GATEWAY_MAX_REQUEST_BYTES", 8 * 1024 * 1024, pos_i, "bytes > 0"),
        body_timeout_seconds=_get(env, "GATEWAY_BODY_TIMEOUT_SECONDS", 30.0, pos_f, "seconds > 0"),
        max_in_flight=_get(env, "GATEWAY_MAX_IN_FLIGHT", 1000, pos_i, "requests > 0"),
        drain_seconds=_get(env, "GATEWAY_DRAIN_SECONDS", 110.0, num, "seconds >= 0"),
        drain_quiet_seconds=_get(env, "GATEWAY_DRAIN_QUIET_SECONDS", 20.0, num, "seconds >= 0"),
        drain_accept_seconds=_get(env, "GATEWAY_DRAIN_ACCEPT_SECONDS", 50.0, num, "seconds >= 0"),
        client_keepalive_seconds=_get(env, "GATEWAY_CLIENT_KEEPALIVE_SECONDS", 620, pos_i, "whole seconds > 0"),
        log_prompts=_get(env, "GATEWAY_LOG_PROMPTS", False, _bool, "true or false"),
        service=env.get("GATEWAY_SERVICE") or "llm-service-local",
        namespace=env.get("GATEWAY_METRICS_NAMESPACE") or "LLMService",
        environment=env.get("APP_ENV") or "local",
        cache_host=env.get("CACHE_HOST", ""), cache_reader_host=env.get("CACHE_READER_HOST", ""),
        cache_port=_get(env, "CACHE_PORT", 6379, pos_i, "a port number"),
        cache_tls=_get(env, "CACHE_TLS", True, _bool, "true or false"),
        cache_auth_token=env.get("CACHE_AUTH_TOKEN", ""), cache_ca_file=env.get("CACHE_TLS_CA_FILE", ""),
        cache_timeout_seconds=_get(env, "GATEWAY_CACHE_TIMEOUT_SECONDS", 0.25, pos_f, "seconds > 0"),
        cache_connect_timeout_seconds=_get(env, "GATEWAY_CACHE_CONNECT_TIMEOUT_SECONDS", 1.0, pos_f,
                                           "seconds > 0"),
        cache_ttl_seconds=_get(env, "GATEWAY_CACHE_TTL_SECONDS", 3600, pos_i, "whole seconds > 0"),
        cache_max_entry_bytes=_get(env, "GATEWAY_CACHE_MAX_ENTRY_BYTES", 1024 * 1024, pos_i, "bytes > 0"),
        coalesce_wait_seconds=_get(env, "GATEWAY_COALESCE_WAIT_SECONDS", 30.0, num, "seconds >= 0"),
        default_limits=_get(env, "GATEWAY_DEFAULT_LIMITS", Limits(), _limits,
                            'JSON such as {"requestsPerMinute": 600, "tokensPerMinute": 200000, "usdPerDay": 50}'),
        prices=_get(env, "GATEWAY_PRICES", Prices(None), _prices,
                    'JSON such as {"gpt-4o-mini": {"inputPerMillion": 0.15, "outputPerMillion": 0.6}}'),
        output_tokens_estimate=_get(env, "GATEWAY_OUTPUT_TOKENS_ESTIMATE", 1000, pos_i, "tokens > 0"),
    )


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
