"""Make the stack's cache entries (or one client's) unreachable at once, by raising a namespace version.

    python -m gateway.cachectl invalidate [--client NAME]

The version lives in Valkey, where every task reads it, so this runs where Valkey is reachable,
inside the VPC: `python -m ops.cache invalidate` starts it as
a one-off ECS task with the service's own task definition and network. It reads only the cache
settings of that environment (CACHE_HOST, CACHE_PORT, CACHE_TLS, CACHE_AUTH_TOKEN,
CACHE_TLS_CA_FILE, GATEWAY_SERVICE), through the gateway's own table (gateway/settings.py), so it
reads each exactly as the gateway does. The old entries expire by their TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Any

from gateway import settings
from gateway.store import StoreUnavailable, ValkeyStore

# The settings that reach the cache, as the gateway reads them.
FIELDS = ("cache_host", "cache_port", "cache_tls", "cache_auth_token", "cache_ca_file", "service")


def cache_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """FIELDS' values in this environment, defaults filled in."""
    return {f: getattr(settings.DEFAULT, f) for f in FIELDS} | settings.read(env, FIELDS)


async def invalidate(client: str | None) -> int:
    try:
        c = cache_settings(os.environ)
    except settings.SettingsError as e:
        print(f"cachectl: {e}", file=sys.stderr)
        return 2
    if not c["cache_host"]:
        print("cachectl: CACHE_HOST is not set: nothing to invalidate", file=sys.stderr)
        return 2
    store = ValkeyStore(c["cache_host"], port=c["cache_port"], password=c["cache_auth_token"], tls=c["cache_tls"],
                        ca_file=c["cache_ca_file"] or None, service=c["service"], timeout=5.0)
    try:
        version = await store.invalidate(client)
    except StoreUnavailable as e:
        print(f"cachectl: the cache did not answer: {e}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    who = f"client {client}'s entries" if client else "every client's entries"
    print(f"invalidated {who} (namespace version {version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.cachectl", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["invalidate"])
    parser.add_argument("--client", help="only this client's entries")
    args = parser.parse_args(argv)
    return asyncio.run(invalidate(args.client))


if __name__ == "__main__":
    sys.exit(main())
