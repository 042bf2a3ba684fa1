"""What keeps clients apart at the LLM API, which sees one key and one project for all of them.

Bodies pass through, so state the API keeps by id would be shared: a client that learned another's
response id, conversation, file, vector store, container or stored prompt could read or continue
it. A client may use such state only if its entry in client-keys says `"stateful": true` (one
application, or clients that trust each other); for every other client the gateway refuses the
fields that name stored state (400) and asks the API to store nothing it answers (`store: false`),
so nothing it sends can be reached by id later. Idempotency keys are scoped to the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Optional

# Fields naming state the API keeps by id. Looked for first in the body as orjson writes it
# (keys as plain quoted text, never escaped; the same word quoted in a prompt is escaped there),
# so an ordinary request pays one scan; a client's `\u005f` spelling is gone by then.
STATE_FIELDS = ("previous_response_id", "conversation", "prompt", "file_id", "vector_store_ids",
                "container", "item_reference")
MARKERS = re.compile(b'"(' + b"|".join(f.encode() for f in STATE_FIELDS) + b')"')
TOP_LEVEL = ("previous_response_id", "conversation", "prompt")  # the Responses API's own


def stored_state(route: str, doc: dict[str, Any], serialised: bytes) -> Optional[str]:
    """The first field of this body that names stored state, or None. `serialised` is
    `orjson.dumps(doc)`, what goes upstream."""
    if route == "responses" and _references_an_item(doc.get("input")):
        return "item_reference"
    if MARKERS.search(serialised) is None:
        return None
    if route == "responses":
        for field in TOP_LEVEL:
            if doc.get(field) is not None:
                return field
    return _named_state(doc)


def _references_an_item(items: Any) -> bool:
    """An input item with an id and no type is a reference to a stored item (as is one of type
    `item_reference`), in the Responses API."""
    return isinstance(items, list) and any(
        isinstance(item, dict) and item.get("id") is not None and item.get("type") is None for item in items)


def _named_state(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        if value.get("type") == "item_reference":
            return "item_reference"
        for key in ("file_id", "vector_store_ids", "container"):
            if value.get(key) is not None:
                return key
        values: Iterable[Any] = value.values()
    elif isinstance(value, list):
        values = value
    else:
        return None
    for v in values:
        found = _named_state(v)
        if found:
            return found
    return None


def stores_nothing(route: str, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The body with `store: false` where the API would otherwise keep the answer (the
    Responses API stores by default), or None when it already stores nothing."""
    if route == "responses" and doc.get("store") is not False:
        return {**doc, "store": False}
    if route == "chat.completions" and doc.get("store"):
        return {**doc, "store": False}
    return None


def idempotency_key(client: str, key: str) -> str:
    return f"{client}:{key}"
