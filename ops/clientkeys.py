"""Add, list, rotate and revoke the gateway's client keys: what applications send instead of the LLM key.

    python -m ops.clientkeys add    --stack staging web-app [--rpm 600 --tpm 200000 --usd-per-day 50]
    python -m ops.clientkeys list   --stack staging
    python -m ops.clientkeys limits --stack staging web-app --usd-per-day 20   # 0: none; --defaults: the stack's
    python -m ops.clientkeys rotate --stack staging web-app [--keep-old]
    python -m ops.clientkeys revoke --stack staging web-app [--key-id 3f9a0c1e]

Keys live only as SHA-256 hashes in the stack's `client-keys` secret (see gateway/keys.py); the
key itself is printed once on stdout (progress goes to stderr, so `KEY=$(...)` captures just the
key) and never stored. Every change then rolls the service out and waits, because ECS hands
secrets to tasks when they start: a revoked key stops working when the rollout completes.
`rotate --keep-old` adds a key and keeps the old ones, so clients can move over before `revoke`.
A client's limits (requests and tokens per minute, USD per day) sit beside its keys and override
the stack's `gateway.defaultLimits` field by field.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from gateway.keys import KeyDocumentError, add_key, empty_document
from infra.config import CLIENT_KEYS
from ops import rollout
from ops.apikey import explain_aws
from ops.boto import client as _client
from ops.rollout import Failure, Stack


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read(s: Stack) -> tuple[dict[str, Any], Optional[str]]:
    """The current document and its version id; an empty document before the first key."""
    sm = _client("secretsmanager", s.region)
    secret_id = s.secrets[CLIENT_KEYS]
    stages = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
    if current is None:
        return empty_document(), None
    text = sm.get_secret_value(SecretId=secret_id, VersionId=current)["SecretString"]
    try:
        doc = json.loads(text)
        if doc.get("version") != 1 or not isinstance(doc.get("clients"), dict):
            raise KeyDocumentError("unexpected shape")
    except (json.JSONDecodeError, AttributeError, KeyDocumentError):
        raise Failure(f"{secret_id} does not hold a client-keys document; nothing was changed") from None
    return doc, current


def write(s: Stack, doc: dict[str, Any], read_version: Optional[str]) -> None:
    sm = _client("secretsmanager", s.region)
    secret_id = s.secrets[CLIENT_KEYS]
    stages = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
    if current != read_version:
        raise Failure(f"{secret_id} changed while this command ran (someone else edited the keys); "
                      "nothing was written, run it again")
    sm.put_secret_value(SecretId=secret_id, SecretString=json.dumps(doc, indent=1, sort_keys=True))


LIMIT_FLAGS = {"rpm": "requestsPerMinute", "tpm": "tokensPerMinute", "usd_per_day": "usdPerDay",
               "concurrent": "concurrentRequests"}


def set_limits(s: Stack, client: str, limits: dict[str, Any], defaults: bool = False,
               models: Optional[list[str]] = None, stateful: Optional[str] = None) -> dict[str, Any]:
    doc, version = read(s)
    entry = doc["clients"].get(client)
    if entry is None:
        raise Failure(f"no client {client!r}")
    entry["limits"] = {} if defaults else {**entry.get("limits", {}), **limits}
    _set_models(s, entry, models)
    _set_stateful(entry, stateful)
    write(s, doc, version)
    return entry["limits"]


def _set_stateful(entry: dict[str, Any], stateful: Optional[str]) -> None:
    """Whether the client may use state the API keeps by id (gateway/tenancy.py)."""
    if stateful == "yes":
        entry["stateful"] = True
    elif stateful == "no":
        entry.pop("stateful", None)


def _set_models(s: Stack, entry: dict[str, Any], models: Optional[list[str]]) -> None:
    """The listed models a client may call ([] or None: leave as is; ["all"]: every listed one)."""
    if not models:
        return
    if models == ["all"]:
        entry.pop("models", None)
        return
    unknown = sorted(set(models) - set(s.cfg.llm.prices))
    if unknown:
        raise Failure(f"{', '.join(unknown)}: not in llm.prices of {s.name} "
                      f"({', '.join(sorted(s.cfg.llm.prices))})")
    entry["models"] = sorted(set(models))


def add(s: Stack, client: str, keep_old: bool = True, must_exist: bool = False,
        limits: Optional[dict[str, Any]] = None, models: Optional[list[str]] = None,
        stateful: Optional[str] = None) -> str:
    doc, version = read(s)
    if must_exist and client not in doc["clients"]:
        raise Failure(f"no client {client!r} (clients: {', '.join(sorted(doc['clients'])) or 'none'})")
    if not must_exist and client in doc["clients"]:
        raise Failure(f"client {client!r} exists; use `rotate` for a new key")
    try:
        key = add_key(doc, client, keep_old=keep_old)
    except KeyDocumentError as e:
        raise Failure(str(e)) from None
    if limits:
        doc["clients"][client]["limits"] = {**doc["clients"][client].get("limits", {}), **limits}
    _set_models(s, doc["clients"][client], models)
    _set_stateful(doc["clients"][client], stateful)
    write(s, doc, version)
    return key


def revoke(s: Stack, client: str, key_id: Optional[str] = None) -> str:
    doc, version = read(s)
    entry = doc["clients"].get(client)
    if entry is None:
        raise Failure(f"no client {client!r}")
    if key_id is None:
        del doc["clients"][client]
        what = f"client {client} and its {len(entry['keys'])} key(s)"
    else:
        kept = [k for k in entry["keys"] if k["id"] != key_id]
        if len(kept) == len(entry["keys"]):
            ids = ", ".join(k["id"] for k in entry["keys"])
            raise Failure(f"client {client!r} has no key {key_id} (has {ids})")
        entry["keys"] = kept
        if not kept:
            del doc["clients"][client]
        what = f"key {key_id} of {client}"
    write(s, doc, version)
    return what


def listing(s: Stack) -> list[str]:
    doc, _ = read(s)
    lines = []
    for name, entry in sorted(doc["clients"].items()):
        keys = ", ".join(f"{k['id']} (created {k['created'][:10]})" for k in entry["keys"])
        own = sorted(entry.get("limits", {}).items())
        limits = ", ".join(f"{k} {v}" for k, v in own) or "the stack's defaults"
        models = ", ".join(entry["models"]) if "models" in entry else "every listed model"
        state = "; may use stored state" if entry.get("stateful") else ""
        lines.append(f"{name}: {keys}; limits: {limits}; models: {models}{state}")
    return lines or ["no clients yet: python -m ops.clientkeys add --stack <stack> <client>"]


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("0 or more")
    return value


def _usd(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("0 or more")
    return value


def main(argv: Optional[list[str]] = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.clientkeys", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["add", "list", "limits", "rotate", "revoke"])
    parser.add_argument("client", nargs="?", help="the client's name (add, rotate, revoke)")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--keep-old", action="store_true", help="rotate: keep the old keys valid")
    parser.add_argument("--key-id", help="revoke: one key of the client instead of the client")
    parser.add_argument("--rpm", type=_count, help="add, limits: requests per minute (0: none)")
    parser.add_argument("--tpm", type=_count, help="add, limits: tokens per minute (0: none)")
    parser.add_argument("--usd-per-day", type=_usd, help="add, limits: spend per UTC day (0: none)")
    parser.add_argument("--concurrent", type=_count, help="add, limits: requests in flight at once (0: none)")
    parser.add_argument("--defaults", action="store_true", help="limits: back to the stack's defaults")
    parser.add_argument("--models", type=lambda raw: [m for m in raw.split(",") if m],
                        help="add, limits: the models of llm.prices this client may call, comma-separated "
                             "(all: every one)")
    parser.add_argument("--stateful", choices=["yes", "no"],
                        help="add, limits: may the client use state the API keeps by id (responses, "
                             "conversations, files...)? Only where clients trust each other")
    parser.add_argument("--outputs", type=Path, help="`pulumi stack output --json` saved to a file")
    parser.add_argument("--region", help="override the stack's region")
    parser.add_argument("--timeout", type=int, default=600, help="seconds to wait for the rollout")
    # Intermixed: `add --stack staging web-app`, as the docs write it, leaves the optional client
    # positional empty and refuses `web-app` under plain parse_args.
    args = parser.parse_intermixed_args(argv)
    if args.action != "list" and not args.client:
        parser.error(f"{args.action} needs a client name")
    where = f"the client-keys secret of {args.stack}"

    def act() -> int:
        s = rollout.resolve(args.stack, args.outputs, args.region)
        if args.action == "list":
            print("\n".join(listing(s)))
            return 0
        limits = {field: getattr(args, flag) for flag, field in LIMIT_FLAGS.items()
                  if getattr(args, flag) is not None}
        if args.action == "revoke":
            _err(f"revoked {revoke(s, args.client, args.key_id)}; it stops working when the rollout completes")
        elif args.action == "limits":
            if not limits and not args.defaults and not args.models and not args.stateful:
                parser.error("limits needs --rpm, --tpm, --usd-per-day, --concurrent, --models, --stateful "
                             "or --defaults")
            now = set_limits(s, args.client, limits, args.defaults, args.models, args.stateful)
            _err(f"limits of {args.client}: {now or 'the stack defaults'}; they apply when the rollout completes")
        else:
            key = add(s, args.client, keep_old=args.keep_old or args.action == "add",
                      must_exist=args.action == "rotate", limits=limits, models=args.models,
                      stateful=args.stateful)
            _err(f"new key for {args.client} (shown once, stored only as a hash):")
            print(key, flush=True)
        rollout.after_secret_change(s, args.timeout, sleep=sleep, clock=clock, log=_err)
        return 0

    return rollout.run(act, lambda e: explain_aws(e, where, args.stack))

if __name__ == "__main__":
    sys.exit(main())
