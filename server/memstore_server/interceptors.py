"""What happens around every RPC: the request id, the access log, metrics, and the error boundary.

gRPC Python runs every interceptor for every call, and an interceptor that builds
a new handler per call (as generic interceptor libraries do) costs tens of
microseconds each. So memstore has one interceptor, ``WrappingInterceptor``,
which wraps each method's behaviour once, with every wrapper, and reuses the
result: each wrapper is a function from a behaviour to a behaviour.

The error boundary (``guard_errors``) is the only place where exceptions meet the
wire: a ServiceError becomes its google.rpc.Status, anything else is logged in
full and reaches the client as a bare INTERNAL naming only the request id. Every
reply, failed or not, carries its request id in trailing metadata.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from memstore_server import metrics, request_context
from memstore_server.errors import Internal, ServiceError, to_rpc_status

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("memstore_server.access")

_CODES_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Deserializer = Callable[[bytes], Any]
Handler = Any  # grpc.RpcMethodHandler, whose stubs do not fit the four kinds of behaviour


@dataclass(frozen=True)
class MethodInfo:
    """What wrappers know of the method they wrap, worked out once per method."""

    full_method: str  # "/memstore.v1.UserService/GetUser"
    service: str
    method: str
    rpc_type: str  # go-grpc-prometheus's grpc_type: unary, server_stream, client_stream, bidi_stream

    @classmethod
    def of(cls, full_method: str, handler: Handler) -> MethodInfo:
        service, _, method = full_method[1:].rpartition("/")
        if handler.request_streaming:
            rpc_type = "bidi_stream" if handler.response_streaming else "client_stream"
        else:
            rpc_type = "server_stream" if handler.response_streaming else "unary"
        return cls(full_method, service, method, rpc_type)


Wrapper = Callable[[Behaviour, MethodInfo], Behaviour]


class WrappingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Applies ``wrappers`` (outermost first) to each method once, and serves the cached result.

    ``deserializer`` may replace a unary method's request deserializer (see decoding.py).
    """

    def __init__(
        self, wrappers: Sequence[Wrapper], deserializer: Callable[[Deserializer], Deserializer] | None = None
    ) -> None:
        self._wrappers = tuple(wrappers)
        self._deserializer = deserializer
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = handler_call_details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = continuation(handler_call_details)
        wrapped = None if handler is None else self._wrap(method, handler)
        with self._lock:
            return self._handlers.setdefault(method, wrapped)

    def _wrap(self, full_method: str, handler: Handler) -> Handler:
        info = MethodInfo.of(full_method, handler)
        if handler.request_streaming and handler.response_streaming:
            factory, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        elif handler.request_streaming:
            factory, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        elif handler.response_streaming:
            factory, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        else:
            factory, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        for wrapper in reversed(self._wrappers):
            behaviour = wrapper(behaviour, info)
        deserializer = handler.request_deserializer
        if self._deserializer is not None and deserializer is not None and not handler.request_streaming:
            deserializer = self._deserializer(deserializer)
        wrapped: Handler = factory(
            behaviour, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )
        return wrapped


class _StatusWithRequestId(grpc.Status):
    def __init__(self, status: grpc.Status, request_id: str) -> None:
        self.code = status.code
        self.details = status.details
        self.trailing_metadata = (*status.trailing_metadata, (request_context.REQUEST_ID_KEY, request_id))


def _abort(error: BaseException, context: grpc.ServicerContext, full_method: str) -> NoReturn:
    request_id = request_context.current()
    if not isinstance(error, ServiceError):
        logger.error("unexpected error in %s [request %s]", full_method, request_id, exc_info=error)
        error = Internal(
            f"internal error; the server log has the details under request id {request_id}", reason="INTERNAL"
        )
    status = rpc_status.to_status(to_rpc_status(error))
    context.abort_with_status(_StatusWithRequestId(status, request_id))
    raise AssertionError("abort_with_status returns only by raising")  # pragma: no cover


def guard_errors(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
    """Turns every exception of a handler, unary or streaming, into a clean status."""

    def guarded_stream(stream: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from stream
        except Exception as error:
            _abort(error, context, info.full_method)

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            result = behaviour(request, context)
        except Exception as error:
            _abort(error, context, info.full_method)
        if inspect.isgenerator(result):
            return guarded_stream(result, context)
        return result

    return guarded


def observe(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
    """Gives each call its request id (the caller's ``x-request-id`` when sane) and, when it
    ends with whatever status, logs one line (method, code, duration, peer, request id) and
    records the standard gRPC server metrics and the span's status."""
    return _Observed(behaviour, info)


class _Observed:
    """One method's behaviour under observation; its metric series are looked up once."""

    def __init__(self, behaviour: Behaviour, info: MethodInfo) -> None:
        self._behaviour = behaviour
        self._info = info
        labels = (info.rpc_type, info.service, info.method)
        self._labels = labels
        self._started = metrics.STARTED.labels(*labels)
        self._received = metrics.MSG_RECEIVED.labels(*labels)
        self._sent = metrics.MSG_SENT.labels(*labels)
        self._handling = metrics.HANDLING_SECONDS.labels(*labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        incoming = None
        for key, value in context.invocation_metadata():
            if key == request_context.REQUEST_ID_KEY and isinstance(value, str):
                incoming = value
        request_id = request_context.assign(incoming)
        context.set_trailing_metadata(((request_context.REQUEST_ID_KEY, request_id),))
        self._started.inc()
        if isinstance(request, Iterator):
            request = self._counted(request)
        else:
            self._received.inc()
        try:
            result = self._behaviour(request, context)
        except BaseException:
            self._finish(context, started, request_id, grpc.StatusCode.UNKNOWN)
            raise
        if inspect.isgenerator(result):
            return self._stream(result, context, started, request_id)
        self._sent.inc()
        self._finish(context, started, request_id, grpc.StatusCode.OK)
        return result

    def _counted(self, requests: Iterator[Any]) -> Iterator[Any]:
        for request in requests:
            self._received.inc()
            yield request

    def _stream(
        self, stream: Iterator[Any], context: grpc.ServicerContext, started: float, request_id: str
    ) -> Iterator[Any]:
        outcome = grpc.StatusCode.UNKNOWN
        try:
            for message in stream:
                self._sent.inc()
                yield message
            outcome = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
        except GeneratorExit:  # gRPC closes the stream's generator when the call is cancelled
            outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._finish(context, started, request_id, outcome)

    def _finish(
        self, context: grpc.ServicerContext, started: float, request_id: str, fallback: grpc.StatusCode
    ) -> None:
        code = context.code() or fallback  # type: ignore[attr-defined]  # set when the handler aborted
        if isinstance(code, int):  # abort_with_status records the numeric code
            code = _CODES_BY_NUMBER.get(code, fallback)
        elapsed = time.perf_counter() - started
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled.setdefault(code, metrics.HANDLED.labels(*self._labels, code.name))
        handled.inc()
        self._handling.observe(elapsed)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.set_attribute("memstore.request_id", request_id)
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        if access_logger.isEnabledFor(logging.INFO):
            peer = context.peer()
            milliseconds = elapsed * 1000
            access_logger.info(
                "%s %s %.1fms peer=%s request_id=%s",
                self._info.full_method,
                code.name,
                milliseconds,
                peer,
                request_id,
                extra={
                    "method": self._info.full_method,
                    "code": code.name,
                    "duration_ms": round(milliseconds, 3),
                    "peer": peer,
                },
            )
