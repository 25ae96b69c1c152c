"""Limits on response streams (ListUsersChunked, health Watch...): how many, and how slow a reader.

A stream holds no thread and, between pages, no database connection, but it
does hold memory: the message being written and its handler's state. So:

- at most ``max_concurrent_streams`` are open at once in a process; one more is
  refused with RESOURCE_EXHAUSTED (reason TOO_MANY_STREAMS) before it does any work;
- a write that the client does not take within ``stream_stall_timeout`` seconds
  (its reader stopped reading and HTTP/2 flow control holds the message back)
  ends the stream's handler, logged at WARNING, and frees its place;
- what streams have read and gRPC has not taken yet is bounded per process
  (stream_memory.py): each stream's reads are counted there, and freed here as
  its messages are written and when it ends.

grpc.aio offers no way to reset one call's HTTP/2 stream from the server, and no
status can be sent while a message is still held back, so the stalled client
learns of it at its own deadline or when it disconnects; until then gRPC keeps
that one message buffered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from memstore_server import metrics, stream_memory
from memstore_server.errors import ResourceExhausted
from memstore_server.handlers import Behaviour, MethodInfo, Wrapper
from memstore_server.stream_memory import StreamMemory
from memstore_server.timeouts import timeout

logger = logging.getLogger(__name__)


class StreamStalled(Exception):
    """The client read nothing for the stall timeout."""


class StreamGone(Exception):
    """A write failed because the call is over: the client cancelled, or its deadline passed."""


class _StreamContext:
    """The call's context, with writes that give up on a client that stopped reading."""

    def __init__(self, context: Any, stall_timeout: float) -> None:
        self._context = context
        self._stall_timeout = stall_timeout

    async def write(self, message: Any) -> None:
        try:
            async with timeout(self._stall_timeout):
                await self._context.write(message)
        except asyncio.TimeoutError:
            raise StreamStalled from None
        except asyncio.CancelledError:
            raise
        except Exception as error:  # gRPC's own errors of a call that ended under us
            raise StreamGone(str(error)) from error
        # Taken by gRPC: what the stream read for it is no longer held.
        stream_memory.free(len(message) if isinstance(message, bytes) else message.ByteSize())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class StreamLimits:
    """Counts the open response streams of one server and applies both limits to each."""

    def __init__(self, max_concurrent: int, stall_timeout: float, memory: StreamMemory) -> None:
        self.max_concurrent = max_concurrent
        self.stall_timeout = stall_timeout
        self.memory = memory
        self.open = 0

    def wrapper(self) -> Wrapper:
        """The wrapper that applies the limits to every response-streaming method."""

        def wrap(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
            if not info.response_streaming:
                return behaviour
            return self._limited(behaviour, info)

        return wrap

    def _limited(self, behaviour: Behaviour, info: MethodInfo) -> Behaviour:
        full_method = info.full_method

        async def limited(request: Any, context: Any) -> Any:
            if self.open >= self.max_concurrent:
                logger.warning(
                    "refused %s: %d streams open, the most allowed (--max-concurrent-streams)",
                    full_method,
                    self.open,
                )
                raise ResourceExhausted(
                    f"the server has {self.max_concurrent} streams open, its limit; "
                    "retry later with backoff, or close streams you no longer read",
                    reason="TOO_MANY_STREAMS",
                )
            self.open += 1
            metrics.OPEN_STREAMS.inc()
            try:
                with self.memory.stream():
                    return await behaviour(request, _StreamContext(context, self.stall_timeout))
            except StreamStalled:
                logger.warning(
                    "cancelled %s: the client read nothing for %gs (--stream-stall-timeout), peer %s",
                    full_method,
                    self.stall_timeout,
                    context.peer(),
                )
                context.set_code(grpc.StatusCode.CANCELLED)
                # A message is still held back, so no status can be sent: end the handler.
                raise asyncio.CancelledError from None
            except StreamGone:
                context.set_code(grpc.StatusCode.CANCELLED)
                raise asyncio.CancelledError from None
            finally:
                self.open -= 1
                metrics.OPEN_STREAMS.dec()

        return limited
