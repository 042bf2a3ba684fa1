"""Client keys: what clients send instead of the LLM key, stored only as SHA-256 hashes.

A key reads `llmgw_<id>_<secret>`: `id` (8 hex digits) finds the entry without comparing every
hash, `secret` (32 random bytes) is what makes it unguessable. The stored document, the value
of the stack's `client-keys` secret, maps client names to their keys' ids and hashes:

    {"version": 1, "clients": {"web-app": {"keys": [{"id": "3f9a0c1e", "sha256": "…",
                                                      "created": "2026-11-25T12:00:00Z"}]}}}

The hash of a 256-bit random secret needs no slow KDF: nobody can guess the preimage. The
comparison is constant-time, and an unknown id costs the same comparison. Standard library only:
the operator command (`ops.clientkeys`) imports this module without the server's dependencies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Optional

PREFIX = "llmgw_"
KEY_SHAPE = re.compile(r"llmgw_(?P<id>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43})")
CLIENT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_NOBODY = hashlib.sha256(b"no such key").digest()


class KeyDocumentError(ValueError):
    """The client-keys document is not what this module writes."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its id. The key is shown once and never stored."""
    key_id = secrets.token_hex(4)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def empty_document() -> dict[str, Any]:
    return {"version": 1, "clients": {}}


def add_key(doc: dict[str, Any], client: str, keep_old: bool = True,
            now: Optional[datetime] = None) -> str:
    """Add a key for `client` (creating the client) and return it; `keep_old=False` drops the
    client's other keys (a rotation without overlap)."""
    if not CLIENT_NAME.fullmatch(client):
        raise KeyDocumentError(f"client name {client!r}: lower-case letters, digits, . _ - "
                               "(up to 63, starting with a letter or digit)")
    key_id, key = new_key()
    entry = doc["clients"].setdefault(client, {"keys": []})
    if not keep_old:
        entry["keys"] = []
    created = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry["keys"].append({"id": key_id, "sha256": digest(key), "created": created})
    return key


@dataclass(frozen=True)
class Client:
    name: str
    limits: dict[str, Any]
    models: Optional[frozenset[str]] = None  # the listed models it may call; None: every one
    stateful: bool = False  # may use state the API keeps by id (gateway/tenancy.py)


class ClientKeys:
    """Lookup from a presented key to its client, in constant time per key."""

    def __init__(self, doc: dict[str, Any]):
        self._by_id: dict[str, tuple[bytes, Client]] = {}
        for name, entry in _clients(doc).items():
            models = entry.get("models")
            client = Client(name, dict(entry.get("limits") or {}),
                            frozenset(models) if isinstance(models, list) else None,
                            entry.get("stateful") is True)
            for key in entry.get("keys") or []:
                self._by_id[key["id"]] = (bytes.fromhex(key["sha256"]), client)

    @classmethod
    def from_json(cls, text: str) -> ClientKeys:
        try:
            return cls(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise KeyDocumentError(f"not a client-keys document: {e}") from None

    def __len__(self) -> int:
        return len({c.name for _, c in self._by_id.values()})

    def named(self, name: str) -> Optional[Client]:
        return next((c for _, c in self._by_id.values() if c.name == name), None)

    def client_for(self, authorization: Optional[bytes]) -> Optional[Client]:
        """The client behind an `Authorization: Bearer <key>` header value, or None."""
        if not authorization or not authorization[:7].lower() == b"bearer ":
            return None
        key = authorization[7:].strip().decode("latin-1")
        m = KEY_SHAPE.fullmatch(key)
        stored, client = self._by_id.get(m["id"], (_NOBODY, None)) if m else (_NOBODY, None)
        presented = hashlib.sha256(key.encode("latin-1")).digest()
        return client if hmac.compare_digest(presented, stored) and client else None


def _clients(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("clients"), dict):
        raise KeyDocumentError('expected {"version": 1, "clients": {...}}')
    clients: dict[str, Any] = doc["clients"]
    return clients
