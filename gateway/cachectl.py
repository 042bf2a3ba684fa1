"""`python -m gateway.cachectl invalidate [--client NAME]`: make the stack's cache entries (or one
client's) unreachable at once, by raising a namespace version in Valkey.

It runs where Valkey is reachable, inside the VPC: `python -m ops.cache invalidate` starts it as
a one-off ECS task with the service's own task definition and network. It reads only the cache
settings of that environment (CACHE_HOST, CACHE_PORT, CACHE_TLS, CACHE_AUTH_TOKEN,
GATEWAY_SERVICE). The old entries expire by their TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from gateway.store import StoreUnavailable, ValkeyStore


async def invalidate(client: str | None) -> int:
    env = os.environ
    if not env.get("CACHE_HOST"):
        print("cachectl: CACHE_HOST is not set: nothing to invalidate", file=sys.stderr)
        return 2
    store = ValkeyStore(env["CACHE_HOST"], "", int(env.get("CACHE_PORT", "6379")), env.get("CACHE_AUTH_TOKEN", ""),
                        env.get("CACHE_TLS", "true").lower() == "true", env.get("CACHE_TLS_CA_FILE") or None,
                        env.get("GATEWAY_SERVICE", "llm-service-local"), timeout=5.0)
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
