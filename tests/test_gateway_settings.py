"""The gateway's settings table (gateway/settings.py VARIABLES): one row per environment variable,
read by the gateway and by cachectl alike, and the only names the task definition may set."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway import cachectl, settings
from gateway.settings import VARIABLES, Settings, SettingsError, from_env
from tests.conftest import container
from tests.test_gateway_contract import image_env

LOCAL = {"OPENAI_API_KEY": "sk-test", "HOST": "127.0.0.1"}


def quiet(env: dict[str, str]) -> Settings:
    return from_env(env, log=lambda line: None)


def test_every_setting_but_the_two_secrets_has_one_variable_and_every_variable_a_setting():
    fields = {f.name for f in dataclasses.fields(Settings)} - {"api_key", "clients"}
    assert sorted(v.field for v in VARIABLES) == sorted(fields)
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)


def unknown_names(app: dict) -> set[str]:
    """What the container sets (the task's environment, the image's ENV lines, the injected
    secrets) that the gateway does not read; Python's own PYTHON* variables aside."""
    known = {v.name for v in VARIABLES} | set(settings.SECRETS)
    names = {e["name"] for e in app["environment"]} | {s["name"] for s in app["secrets"]} | set(image_env())
    return {n for n in names - known if not n.startswith("PYTHON")}


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_the_task_definition_sets_only_variables_the_gateway_reads(request, stack):
    app = container(request.getfixturevalue(stack))
    assert unknown_names(app) == set()
    # Each value the task sets parses, as the gateway will read it at start-up.
    parsed = quiet({**LOCAL, **{e["name"]: e["value"] for e in app["environment"]}})
    assert (parsed.service, parsed.environment) == (f"llm-service-{stack}", stack)


def test_a_misspelt_or_unknown_name_in_the_task_is_found(staging):
    app = container(staging)
    misspelt = {**app, "environment": [*app["environment"], {"name": "GATEWAY_MAX_ATEMPTS", "value": "2"}],
                "secrets": [*app["secrets"], {"name": "ANTHROPIC_API_KEY", "valueFrom": "arn:..."}]}
    assert unknown_names(misspelt) == {"GATEWAY_MAX_ATEMPTS", "ANTHROPIC_API_KEY"}


@pytest.mark.parametrize("tls", ["true", "TRUE", "1", "yes", "false", "0", "no", ""])
@pytest.mark.parametrize("port", ["6380", ""])
def test_cachectl_reads_the_cache_variables_as_the_gateway_does(tls, port):
    env = {**LOCAL, "CACHE_HOST": "cache.internal", "CACHE_TLS": tls, "CACHE_PORT": port,
           "CACHE_AUTH_TOKEN": "t" * 32, "CACHE_TLS_CA_FILE": "/ca.pem", "GATEWAY_SERVICE": "llm-service-prod"}
    gateway = quiet(env)
    assert cachectl.cache_settings(env) == {f: getattr(gateway, f) for f in cachectl.FIELDS}


def test_cache_tls_1_is_tls_for_both():
    """cachectl once read CACHE_TLS=1 as plain text where the gateway read it as TLS."""
    assert cachectl.cache_settings({"CACHE_TLS": "1"})["cache_tls"] is True
    assert cachectl.cache_settings({"CACHE_TLS": "no"})["cache_tls"] is False


def test_cachectl_refuses_a_bad_value_as_the_gateway_does(capsys, monkeypatch):
    monkeypatch.setattr(cachectl.os, "environ", {"CACHE_HOST": "h", "CACHE_TLS": "maybe"})
    assert cachectl.main(["invalidate"]) == 2
    assert capsys.readouterr().err == "cachectl: CACHE_TLS='maybe': true or false\n"
    with pytest.raises(SettingsError, match=r"^CACHE_TLS='maybe': true or false$"):
        quiet({**LOCAL, "CACHE_TLS": "maybe"})


def test_unset_or_empty_keeps_the_default_and_each_kind_of_bad_value_names_its_variable():
    default = quiet(LOCAL)
    assert quiet({**LOCAL, "GATEWAY_MAX_ATTEMPTS": ""}).max_attempts == default.max_attempts == 3
    assert quiet({**LOCAL, "GATEWAY_MAX_ATTEMPTS": "5", "GATEWAY_DRAIN_SECONDS": "0"}).max_attempts == 5
    cases = {
        "GATEWAY_MAX_ATTEMPTS": ("0", "attempts >= 1"),  # positive integers
        "GATEWAY_SSE_KEEPALIVE_SECONDS": ("-1", "seconds > 0"),  # positive numbers
        "GATEWAY_DRAIN_SECONDS": ("soon", "seconds >= 0"),  # numbers
        "GATEWAY_LOG_PROMPTS": ("sometimes", "true or false"),
        "GATEWAY_DEFAULT_LIMITS": ("[1]", settings.LIMITS_JSON),
        "GATEWAY_PRICES": ("{", settings.PRICES_JSON),
        "OPENAI_BASE_URL": ("ftp://x", "an http(s) URL such as https://api.openai.com/v1"),
    }
    for name, (value, allowed) in cases.items():
        with pytest.raises(SettingsError) as e:
            quiet({**LOCAL, name: value})
        assert str(e.value) == f"{name}={value!r}: {allowed}", name


def test_a_base_url_with_credentials_is_refused_without_echoing_them():
    with pytest.raises(SettingsError) as e:
        quiet({**LOCAL, "OPENAI_BASE_URL": "https://user:hunter2@api.example.net/v1"})
    # The whole line an operator reads in the task's log: where the key goes instead.
    assert str(e.value) == ("OPENAI_BASE_URL carries credentials (user:password@): the key goes in "
                            "OPENAI_API_KEY, never in a URL that lands in logs and errors")


def test_a_local_run_has_the_settings_a_stack_gets_by_default():
    """The gateway's own defaults (a `make serve`) are what infra/program.py gives a deployed task
    from a stack's default sections: every variable it sets, but the names and prices."""
    from infra.config import load
    from infra.program import KEEPALIVE_OVER_IDLE_SECONDS, gateway_environment
    from tests.conftest import stack_config

    cfg = load(*stack_config("staging"))
    lb = type(cfg.load_balancer)(certificate_arn=cfg.load_balancer.certificate_arn)
    service = cfg.service.model_copy(update={"cpu": 512, "stop_timeout_seconds": 120})
    defaults = cfg.model_copy(update={"gateway": type(cfg.gateway)(), "load_balancer": lb, "service": service})
    stack = settings.read(gateway_environment(defaults, "llm-service-staging"))
    local = quiet(LOCAL)
    differ = {k: (v, getattr(local, k)) for k, v in stack.items() if v != getattr(local, k)}
    assert set(differ) == {"service", "prices"}, differ
    assert local.client_keepalive_seconds == local.read_timeout_seconds + KEEPALIVE_OVER_IDLE_SECONDS


UPSTREAM = {"backup": {"baseUrl": "https://api.openai.com/v1", "keyVariable": "BACKUP_KEY"}}


def test_upstreams_and_routes_each_way_they_can_be_wrong_is_one_line_naming_the_variable():
    ups = json.dumps(UPSTREAM)
    ok = quiet({**LOCAL, "GATEWAY_UPSTREAMS": ups, "BACKUP_KEY": " k-2 ",
                "GATEWAY_ROUTES": '{"m": [{"upstream": "backup", "model": "x"}]}'})
    assert ok.upstreams["backup"].key == "k-2" and ok.routes["m"].single.upstream == "backup"
    generic = {
        "GATEWAY_UPSTREAMS": ["{", '{"default": {"baseUrl": "https://a/v1", "keyVariable": "K"}}',
                              '{"Bad_Name": {"baseUrl": "https://a/v1", "keyVariable": "K"}}',
                              '{"b": {"baseUrl": "https://a/v1", "keyVariable": "K", "auth": "basic"}}',
                              '{"b": {"baseUrl": "https://a/v1", "keyVariable": "not-a-variable"}}',
                              '{"b": {"baseUrl": "ftp://a/v1", "keyVariable": "K"}}',
                              '{"b": {"keyVariable": "K"}}'],
        "GATEWAY_ROUTES": ["[1]", "{"],
    }
    allowed = {"GATEWAY_UPSTREAMS": settings.UPSTREAMS_JSON, "GATEWAY_ROUTES": settings.ROUTES_JSON}
    for name, values in generic.items():
        for value in values:
            with pytest.raises(SettingsError) as e:
                quiet({**LOCAL, name: value, "K": "k"})
            assert str(e.value) == f"{name}={value!r}: {allowed[name]}", value
    with pytest.raises(SettingsError) as e:
        quiet({**LOCAL, "GATEWAY_UPSTREAMS": ups})
    assert str(e.value) == ("GATEWAY_UPSTREAMS: upstream 'backup' reads its key from BACKUP_KEY, which is not set "
                            "(its secret: python -m ops.apikey put --name <secret>)")
    with pytest.raises(SettingsError) as e:
        quiet({**LOCAL, "GATEWAY_UPSTREAMS": ups, "BACKUP_KEY": "k",
               "GATEWAY_ROUTES": '{"m": [{"upstream": "elsewhere", "model": "x"}]}'})
    assert str(e.value) == "GATEWAY_ROUTES: route 'm': no upstream 'elsewhere' (have ['backup', 'default'])"
    with pytest.raises(SettingsError) as e:
        quiet({**LOCAL, "GATEWAY_ROUTES": '{"m": [{"model": "x"}]}'})
    assert str(e.value) == "GATEWAY_ROUTES: route 'm': each target is {upstream, model, weight, tier}"
    secret = ('{"Bad_Name": {"baseUrl": "https://a/v1", "keyVariable": "K"}, '
              '"b": {"baseUrl": "https://me:hunter2@a.example/v1", "keyVariable": "K"}}')
    with pytest.raises(SettingsError) as e:
        quiet({**LOCAL, "GATEWAY_UPSTREAMS": secret, "K": "k"})
    assert "hunter2" not in str(e.value)
    assert str(e.value).startswith("GATEWAY_UPSTREAMS: upstream 'b' has a baseUrl")
