"""Server interceptors: the access log (with the request id) and the error boundary.

The error boundary is the only place where exceptions meet the wire: a
ServiceError becomes its google.rpc.Status, anything else is logged in full and
reaches the client as a bare INTERNAL, with no SQL or stack trace in it. Every
reply, failed or not, carries its request id in trailing metadata.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from grpc_interceptor import ServerInterceptor
from grpc_status import rpc_status

from memstore_server import request_context
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


class AccessLogInterceptor(ServerInterceptor):
    """Gives each RPC its request id and logs one line when it ends: method, code, duration, peer, id."""

    def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        started = time.perf_counter()
        incoming = dict(context.invocation_metadata()).get(request_context.REQUEST_ID_KEY)
        request_id = request_context.assign(incoming if isinstance(incoming, str) else None)
        context.set_trailing_metadata(((request_context.REQUEST_ID_KEY, request_id),))
        try:
            result = method(request, context)
        except BaseException:
            _log(method_name, context, started, grpc.StatusCode.UNKNOWN, request_id)
            raise
        if inspect.isgenerator(result):
            return self._log_stream(result, context, method_name, started, request_id)
        _log(method_name, context, started, grpc.StatusCode.OK, request_id)
        return result

    @staticmethod
    def _log_stream(
        stream: Iterator[Any],
        context: grpc.ServicerContext,
        method_name: str,
        started: float,
        request_id: str,
    ) -> Iterator[Any]:
        outcome = grpc.StatusCode.UNKNOWN
        try:
            yield from stream
            outcome = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
        except GeneratorExit:  # gRPC closes the stream's generator when the call is cancelled
            outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            _log(method_name, context, started, outcome, request_id)


def _log(
    method_name: str,
    context: grpc.ServicerContext,
    started: float,
    fallback: grpc.StatusCode,
    request_id: str,
) -> None:
    code = context.code() or fallback  # type: ignore[attr-defined]  # set when the handler aborted
    if isinstance(code, int):  # abort_with_status records the numeric code
        code = _CODES_BY_NUMBER.get(code, fallback)
    access_logger.info(
        "%s %s %.1fms peer=%s request_id=%s",
        method_name,
        code.name,
        (time.perf_counter() - started) * 1000,
        context.peer(),
        request_id,
    )
