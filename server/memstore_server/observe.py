"""What is recorded of every RPC: its request id, one access-log line, the gRPC metrics, the span.

This is the outermost wrapper (see handlers.py), so it sees the status every
other wrapper settled on, and it runs on every call: everything it needs per
method (metric children, names) is looked up once, when the method is wrapped,
and the access-log line is handed to the log's writer thread as a tuple: the
record is built, formatted and written there (logs.info_later), off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from memstore_server import logs, metrics, request_context
from memstore_server.handlers import Behaviour, MethodInfo

access_logger = logging.getLogger("memstore_server.access")

_CODES_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}
_ACCESS_FORMAT = "%s %s %.1fms peer=%s request_id=%s"
# A response stream's line also says how many messages it sent, since it is written when it ends.
_STREAM_ACCESS_FORMAT = "%s %s %.1fms messages=%d peer=%s request_id=%s"


class _CountedWrites:
    """The call's context, counting the messages written to a response stream."""

    def __init__(self, context: Any, sent: Any) -> None:
        self._context = context
        self._sent = sent
        self.count = 0

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self.count += 1
        self._sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def status_of(context: Any, fallback: grpc.StatusCode) -> grpc.StatusCode:
    """The status the call ended with: the one set or aborted with, else ``fallback``."""
    code = context.code()
    if code is None:
        return fallback
    if isinstance(code, int):
        return _CODES_BY_NUMBER.get(code, fallback)
    return code  # type: ignore[no-any-return]


def _incoming_request_id(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == request_context.REQUEST_ID_KEY and isinstance(value, str):
            return value
    return None


def observe(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
    """Gives each call its request id (the caller's ``x-request-id`` when sane) and, when it
    ends with whatever status, logs one line (method, code, duration, peer, request id,
    and for a response stream the messages it sent), records the go-grpc-prometheus
    series and sets the span's status."""
    labels = (info.rpc_type, info.service, info.method)
    started_total = metrics.STARTED.labels(*labels)
    received = metrics.MSG_RECEIVED.labels(*labels)
    sent = metrics.MSG_SENT.labels(*labels)
    handling = metrics.HANDLING_SECONDS.labels(*labels)
    handled: dict[grpc.StatusCode, Any] = {
        code: metrics.HANDLED.labels(*labels, code.name) for code in grpc.StatusCode
    }
    full_method = info.full_method
    streams_responses = info.response_streaming

    def finish(
        context: Any, started: float, request_id: str, code: grpc.StatusCode, writes: _CountedWrites | None
    ) -> None:
        elapsed = time.perf_counter() - started
        handled[code].inc()
        handling.observe(elapsed)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.set_attribute("memstore.request_id", request_id)
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        if access_logger.isEnabledFor(logging.INFO):
            line = (full_method, code.name, elapsed * 1000, context.peer(), request_id)
            _log_access(line, messages=None if writes is None else writes.count)

    async def observed(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        request_id = request_context.assign(_incoming_request_id(context))
        context.set_trailing_metadata(((request_context.REQUEST_ID_KEY, request_id),))
        started_total.inc()
        if info.request_streaming:
            request = _counted(request, received)
        else:
            received.inc()
        writes = _CountedWrites(context, sent) if streams_responses else None
        try:
            result = await behaviour(request, context if writes is None else writes)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            ended = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            finish(context, started, request_id, status_of(context, ended), writes)
            raise
        except BaseException:
            finish(context, started, request_id, status_of(context, grpc.StatusCode.UNKNOWN), writes)
            raise
        if writes is None:
            sent.inc()
        finish(context, started, request_id, status_of(context, grpc.StatusCode.OK), writes)
        return result

    return observed


def _log_access(line: tuple[str, str, float, str, str], *, messages: int | None) -> None:
    """Hand the call's access-log line (method, code, milliseconds, peer, request id) to
    the log's writer thread (see logs.info_later)."""
    full_method, code, milliseconds, peer, request_id = line
    fields: dict[str, Any] = {
        "method": full_method,
        "code": code,
        "duration_ms": round(milliseconds, 3),
        "peer": peer,
        "request_id": request_id,
        "trace_id": request_context.trace_id(),
    }
    if messages is None:
        logs.info_later(access_logger, _ACCESS_FORMAT, line, fields)
        return
    fields["messages_sent"] = messages
    arguments = (full_method, code, milliseconds, messages, peer, request_id)
    logs.info_later(access_logger, _STREAM_ACCESS_FORMAT, arguments, fields)


async def _counted(requests: AsyncIterator[Any], received: Any) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request
