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
    ends with whatever status, logs one line (method, code, duration, peer, request id),
    records the go-grpc-prometheus series and sets the span's status."""
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

    def finish(context: Any, started: float, request_id: str, code: grpc.StatusCode) -> None:
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
            peer = context.peer()
            milliseconds = elapsed * 1000
            logs.info_later(
                access_logger,
                _ACCESS_FORMAT,
                (full_method, code.name, milliseconds, peer, request_id),
                {
                    "method": full_method,
                    "code": code.name,
                    "duration_ms": round(milliseconds, 3),
                    "peer": peer,
                    "request_id": request_id,
                    "trace_id": request_context.trace_id(),
                },
            )

    async def observed(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        request_id = request_context.assign(_incoming_request_id(context))
        context.set_trailing_metadata(((request_context.REQUEST_ID_KEY, request_id),))
        started_total.inc()
        if info.request_streaming:
            request = _counted(request, received)
        else:
            received.inc()
        try:
            result = await behaviour(request, context)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            ended = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            finish(context, started, request_id, status_of(context, ended))
            raise
        except BaseException:
            finish(context, started, request_id, status_of(context, grpc.StatusCode.UNKNOWN))
            raise
        if not streams_responses:
            sent.inc()  # a stream's messages are counted as they are written (streams.py)
        finish(context, started, request_id, status_of(context, grpc.StatusCode.OK))
        return result

    return observed


async def _counted(requests: AsyncIterator[Any], received: Any) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request
