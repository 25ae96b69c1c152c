"""No response leaves a handler larger than the message size limit, so every layer records what is sent.

gRPC refuses to send a message above ``grpc.max_send_message_length``: the caller
gets RESOURCE_EXHAUSTED, yet the handler had returned normally, so the access log,
the metrics and the span all said OK. Measured here, before gRPC sees it, such a
response becomes memstore's own RESOURCE_EXHAUSTED (reason RESPONSE_TOO_LARGE),
which the error boundary sends and everything above it records.

Pages and stream chunks are cut to fit (responses.py), and one user at its
largest fits the smallest allowed limit (config.MIN_MAX_MESSAGE_BYTES), so this
is the guarantee behind those rules rather than a path callers should meet.
"""

from __future__ import annotations

from typing import Any

from memstore_server.errors import ResourceExhausted
from memstore_server.handlers import Behaviour, MethodInfo, Wrapper


def _size(response: Any) -> int:
    return len(response) if isinstance(response, bytes) else int(response.ByteSize())


def _too_large(size: int, max_bytes: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the response would be {size} bytes, more than this server sends in one message "
        f"({max_bytes} bytes, --max-message-bytes); the server's operator can raise that limit",
        reason="RESPONSE_TOO_LARGE",
        metadata={"size": str(size), "limit": str(max_bytes)},
    )


class _MeasuredWrites:
    """The call's context, with each streamed message measured before it is written."""

    def __init__(self, context: Any, max_bytes: int) -> None:
        self._context = context
        self._max_bytes = max_bytes

    async def write(self, message: Any) -> None:
        size = _size(message)
        if size > self._max_bytes:
            raise _too_large(size, self._max_bytes)
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def within(max_bytes: int) -> Wrapper:
    """The wrapper that holds every response (unary or streamed) to ``max_bytes``."""

    def wrap(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
        if info.response_streaming:

            async def measured_stream(request: Any, context: Any) -> Any:
                return await behaviour(request, _MeasuredWrites(context, max_bytes))

            return measured_stream

        async def measured(request: Any, context: Any) -> Any:
            response = await behaviour(request, context)
            size = _size(response)
            if size > max_bytes:
                raise _too_large(size, max_bytes)
            return response

        return measured

    return wrap
