"""Requests that do not parse are the caller's fault: INVALID_ARGUMENT, not INTERNAL or UNKNOWN.

gRPC Python answers a request it cannot deserialize (say, a string field holding
invalid UTF-8, or bytes that are no protobuf at all) with a bare error status.
``tolerant`` deserializes requests itself, so such a request reaches the error
boundary as an InvalidArgument naming the message, for unary calls and for each
message of a request stream alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError

from memstore_server.errors import InvalidArgument
from memstore_server.handlers import Behaviour, MethodInfo
from memstore_server.validation import MAX_METADATA_DEPTH


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer``, returning an _Undecodable instead of raising on bytes that do not parse."""
    message_class = getattr(deserializer, "__self__", None)  # deserializers are Message.FromString
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    undecodable = _Undecodable(descriptor.full_name if descriptor is not None else "protobuf")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return undecodable

    return deserialize


def _refusal(request: _Undecodable) -> InvalidArgument:
    # The parser's own text says nothing a caller can act on, so it is not passed on.
    return InvalidArgument.single(
        "request",
        f"is not a valid {request.message_name} message: its bytes do not parse "
        "(truncated or corrupt, a string field that is not UTF-8, or nested deeper than a "
        f"protobuf parser allows: metadata may nest at most {MAX_METADATA_DEPTH} levels)",
    )


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise _refusal(request)
        yield request


def reject_undecodable(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
    """A request (or request message) that did not parse becomes INVALID_ARGUMENT."""
    if info.request_streaming:

        async def checked_stream(requests: Any, context: Any) -> Any:
            return await behaviour(_checked_stream(requests), context)

        return checked_stream

    async def checked(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            raise _refusal(request)
        return await behaviour(request, context)

    return checked
