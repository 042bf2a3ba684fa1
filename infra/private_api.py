"""Every private API of Pulumi's SDK and boto3 this repository calls, in one place.

Pulumi's Python SDK has no public way to read a stack's whole config map (only key by key), to
run a program under mocks and wait for it outside `pulumi up`, or to read a resource's type and
name; boto3 has none to get the session `boto3.client()` uses. These wrappers are the only code
that touches the private names, listed in USED: `tests/test_private_api.py` checks each one still
exists, so an SDK upgrade that drops one fails there, by name, not deep inside a synthesis.
(`tests/run_examples.py` runs with nothing of this repository importable, so it receives this
file beside it.)
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

# module -> the names of it used here, none of them documented API.
USED = {
    "pulumi.runtime.config": ("CONFIG", "_SECRET_KEYS", "get_config_env", "get_config_secret_keys_env"),
    "pulumi.runtime.stack": ("run_pulumi_func",),
    "pulumi.runtime.sync_await": ("_sync_await",),
    "pulumi.runtime.settings": ("ROOT", "SETTINGS", "get_root_resource"),
    "pulumi.runtime.rpc": ("is_rpc_secret", "unwrap_rpc_secret", "wrap_rpc_secret"),
    "pulumi.runtime.resource": ("_get_stack_trace",),
    "pulumi.runtime.mocks": ("MockMonitor",),
    "pulumi.resource": ("Resource._type", "Resource._name"),
    "boto3": ("_get_default_session",),
}


def missing() -> list[str]:
    """The names in USED that the installed SDKs no longer have ([] when all are there)."""
    gone = []
    for module_name, names in USED.items():
        module = importlib.import_module(module_name)
        for name in names:
            owner, _, attr = name.rpartition(".")
            holder = getattr(module, owner) if owner else module
            # An instance attribute (Resource._name) is declared in the class's annotations.
            if not (hasattr(holder, attr) or attr in getattr(holder, "__annotations__", {})):
                gone.append(f"{module_name}.{name}")
    return gone


def stack_config() -> tuple[dict[str, Any], set[str]]:
    """The stack's config as Pulumi hands it to the program (strings, objects as JSON), from the
    runtime's map and the PULUMI_CONFIG environment variable, and the keys that are secret."""
    from pulumi.runtime import config

    merged = {**config.get_config_env(), **config.CONFIG.get()}
    secret = set(config.get_config_secret_keys_env()) | set(config._SECRET_KEYS.get())  # noqa: SLF001
    return merged, secret


def wait(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to its end on Pulumi's event loop, from synchronous code."""
    from pulumi.runtime.sync_await import _sync_await

    return _sync_await(awaitable)


def run_program(program: Callable[[], Any]) -> None:
    """Run a Pulumi program under the mocks set with `pulumi.runtime.set_mocks`, to its end.

    Without the source position the SDK records with each resource for the engine's messages:
    it extracts the whole Python stack, source lines and all, per resource (a sixth of a
    synthesis), and no mock reads it."""
    from pulumi.runtime import resource
    from pulumi.runtime.proto import source_pb2
    from pulumi.runtime.stack import run_pulumi_func

    saved = resource._get_stack_trace  # noqa: SLF001
    resource._get_stack_trace = source_pb2.StackTrace  # noqa: SLF001 - an empty trace: no position
    try:
        wait(run_pulumi_func(program))
    finally:
        resource._get_stack_trace = saved  # noqa: SLF001


def reset_root() -> None:
    """Forget the last program's stack resource and outputs, so the next run starts clean."""
    from pulumi.runtime import settings

    settings.ROOT.set(None)
    settings.SETTINGS.outputs.clear()


def root_outputs() -> dict[str, Any]:
    """The outputs the last program exported."""
    from pulumi.runtime import settings

    root = settings.get_root_resource()
    return dict(root.outputs) if root else {}


def mock_monitor() -> type:
    """The engine `set_mocks` stands up (its `monitor` argument takes one), to subclass: it is the
    only place that sees what a component registers as its outputs."""
    from pulumi.runtime.mocks import MockMonitor

    return MockMonitor


def resource_type(resource: Any) -> str:
    return resource._type  # noqa: SLF001


def resource_name(resource: Any) -> str:
    return resource._name  # noqa: SLF001


def is_secret(value: Any) -> bool:
    """A value the mocks received marked secret."""
    from pulumi.runtime import rpc

    return rpc.is_rpc_secret(value)


def unwrap_secret(value: Any) -> Any:
    from pulumi.runtime import rpc

    return rpc.unwrap_rpc_secret(value)


def wrap_secret(value: Any) -> Any:
    from pulumi.runtime import rpc

    return rpc.wrap_rpc_secret(value)


def default_boto3_session() -> Any:
    """The session `boto3.client()` uses (made on first use from the environment)."""
    import boto3

    return boto3._get_default_session()  # noqa: SLF001
