"""The types of the ASGI interface as the gateway uses them (asgi.readthedocs.io, HTTP and
lifespan), and of the JSON documents it reads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]  # as they go out: lower-case names
RequestHeaders = dict[bytes, bytes]  # as they came in, by lower-case name
Doc = dict[str, Any]  # a parsed JSON object
