"""Server interceptors: the access log (with the request id) and the error boundary.

The error boundary is the only place where exceptions meet the wire: a
ServiceError becomes its google.rpc.Status, anything else is logged in full and
reaches the client as a bare INTERNAL, with no SQL or stack trace in it. Every
reply, failed or not, carries its request id in trailing metadata.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pool
from grpc_interceptor import ServerInterceptor
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from memstore_server import metrics, request_context
from memstore_server.errors import Internal, ServiceError, to_rpc_status

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("memstore_server.access")

_CODES_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class _StatusWithRequestId(grpc.Status):
    def __init__(self, status: grpc.Status, request_id: str) -> None:
        self.code = status.code
        self.details = status.details
        self.trailing_metadata = (*status.trailing_metadata, (request_context.REQUEST_ID_KEY, request_id))


def _abort(error: BaseException, context: grpc.ServicerContext, method_name: str) -> NoReturn:
    request_id = request_context.current()
    if not isinstance(error, ServiceError):
        logger.error("unexpected error in %s [request %s]", method_name, request_id, exc_info=error)
        error = Internal(
            f"internal error; the server log has the details under request id {request_id}", reason="INTERNAL"
        )
    status = rpc_status.to_status(to_rpc_status(error))
    context.abort_with_status(_StatusWithRequestId(status, request_id))
    raise AssertionError("abort_with_status returns only by raising")  # pragma: no cover


class ErrorInterceptor(ServerInterceptor):
    """Turns every exception of a handler, unary or streaming, into a clean status."""

    def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        try:
            result = method(request, context)
        except Exception as error:
            _abort(error, context, method_name)
        if inspect.isgenerator(result):
            return self._guard_stream(result, context, method_name)
        return result

    @staticmethod
    def _guard_stream(
        stream: Iterator[Any], context: grpc.ServicerContext, method_name: str
    ) -> Iterator[Any]:
        try:
            yield from stream
        except Exception as error:
            _abort(error, context, method_name)


@functools.cache
def _rpc_type(full_method: str) -> str:
    """go-grpc-prometheus's grpc_type of a method, from its descriptor: unary, server_stream..."""
    service, _, name = full_method[1:].rpartition("/")
    try:
        method = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return "unary"
    if method.client_streaming:
        return "bidi_stream" if method.server_streaming else "client_stream"
    return "server_stream" if method.server_streaming else "unary"


def _counted(requests: Iterator[Any], labels: tuple[str, str, str]) -> Iterator[Any]:
    counter = metrics.MSG_RECEIVED.labels(*labels)
    for request in requests:
        counter.inc()
        yield request


class CallObserverInterceptor(ServerInterceptor):
    """Sees every RPC from start to status: request id, access-log line, metrics, span status.

    Gives each RPC its request id (the caller's ``x-request-id`` when sane), and
    when the RPC ends, with whatever status, logs one line (method, code,
    duration, peer, request id) and records the standard gRPC server metrics.
    """

    def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        started = time.perf_counter()
        incoming = dict(context.invocation_metadata()).get(request_context.REQUEST_ID_KEY)
        request_id = request_context.assign(incoming if isinstance(incoming, str) else None)
        context.set_trailing_metadata(((request_context.REQUEST_ID_KEY, request_id),))
        service, _, name = method_name[1:].rpartition("/")
        call = _Call(method_name, service, name, _rpc_type(method_name), started, request_id)
        metrics.STARTED.labels(call.rpc_type, service, name).inc()
        if isinstance(request, Iterator):
            request = _counted(request, (call.rpc_type, service, name))
        else:
            metrics.MSG_RECEIVED.labels(call.rpc_type, service, name).inc()
        try:
            result = method(request, context)
        except BaseException:
            _finish(call, context, grpc.StatusCode.UNKNOWN)
            raise
        if inspect.isgenerator(result):
            return self._observe_stream(result, context, call)
        metrics.MSG_SENT.labels(call.rpc_type, service, name).inc()
        _finish(call, context, grpc.StatusCode.OK)
        return result

    @staticmethod
    def _observe_stream(stream: Iterator[Any], context: grpc.ServicerContext, call: _Call) -> Iterator[Any]:
        outcome = grpc.StatusCode.UNKNOWN
        sent = metrics.MSG_SENT.labels(call.rpc_type, call.service, call.method)
        try:
            for message in stream:
                sent.inc()
                yield message
            outcome = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
        except GeneratorExit:  # gRPC closes the stream's generator when the call is cancelled
            outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            _finish(call, context, outcome)


@dataclass(frozen=True)
class _Call:
    full_method: str
    service: str
    method: str
    rpc_type: str
    started: float
    request_id: str


def _finish(call: _Call, context: grpc.ServicerContext, fallback: grpc.StatusCode) -> None:
    code = context.code() or fallback  # type: ignore[attr-defined]  # set when the handler aborted
    if isinstance(code, int):  # abort_with_status records the numeric code
        code = _CODES_BY_NUMBER.get(code, fallback)
    elapsed = time.perf_counter() - call.started
    metrics.HANDLED.labels(call.rpc_type, call.service, call.method, code.name).inc()
    metrics.HANDLING_SECONDS.labels(call.rpc_type, call.service, call.method).observe(elapsed)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_attribute("memstore.request_id", call.request_id)
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    access_logger.info(
        "%s %s %.1fms peer=%s request_id=%s",
        call.full_method,
        code.name,
        elapsed * 1000,
        context.peer(),
        call.request_id,
        extra={
            "method": call.full_method,
            "code": code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "peer": context.peer(),
        },
    )
