"""Errors the gateway itself raises, in OpenAI's shape, so SDKs raise their usual exceptions.

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import orjson


@dataclass
class GatewayError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: Optional[str] = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    param: Optional[str] = None  # the request field at fault

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type,
                                       "param": self.param, "code": self.code}})

    def sse_event(self) -> bytes:
        """The same error as a stream event: after a stream has begun no status can change,
        and OpenAI's SDKs raise on an event whose data carries `error`."""
        return b"data: " + self.body() + b"\n\n"


def unauthorized(presented: bool) -> GatewayError:
    if presented:
        return GatewayError(401, "Incorrect API key provided. Use a client key this gateway issued "
                                 "(python -m ops.clientkeys add <client>).", code="invalid_api_key")
    return GatewayError(401, "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                        code="missing_api_key")


def invalid(message: str, param: Optional[str] = None, code: Optional[str] = None) -> GatewayError:
    """A request the gateway refuses as OpenAI would: 400, the field at fault."""
    return GatewayError(400, message, code=code, param=param)


def not_found(method: str, path: str) -> GatewayError:
    return GatewayError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body larger than {limit} bytes.", code="request_too_large")


def bad_json() -> GatewayError:
    return GatewayError(400, "We could not parse the JSON body of your request.", code="invalid_json")


def upstream_unavailable(detail: str) -> GatewayError:
    # `detail` names the failure's kind only: never the upstream's address.
    return GatewayError(502, f"The LLM API could not be reached ({detail}).", type="server_error",
                        code="upstream_unavailable")


def upstream_timeout(seconds: float) -> GatewayError:
    return GatewayError(504, f"The LLM API sent nothing for {seconds:g} s.", type="server_error",
                        code="upstream_timeout")


def stream_interrupted() -> GatewayError:
    return GatewayError(502, "The LLM API closed the stream before it finished.", type="server_error",
                        code="upstream_stream_interrupted")


def stream_cut_by_drain() -> GatewayError:
    return GatewayError(503, "The gateway stopped before the stream finished (it is being replaced); "
                             "retry the request.", type="server_error", code="gateway_draining")


def internal() -> GatewayError:
    return GatewayError(500, "The gateway failed on this request; retry it.", type="server_error",
                        code="gateway_error")


def body_timeout(seconds: float) -> GatewayError:
    return GatewayError(408, f"The request body did not arrive within {seconds:g} s.", code="request_timeout")


def overloaded() -> GatewayError:
    return GatewayError(503, "The gateway is serving as many requests as it can; retry shortly.",
                        type="server_error", code="server_overloaded", headers=[(b"retry-after", b"1")])
