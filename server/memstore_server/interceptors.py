"""Server interceptors: the error boundary and the access log.

The error boundary is the only place where exceptions meet the wire: a
ServiceError becomes its google.rpc.Status, anything else is logged in full and
reaches the client as a bare INTERNAL, with no SQL or stack trace in it.
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

from memstore_server.errors import Internal, ServiceError, to_rpc_status

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("memstore_server.access")


def _abort(error: BaseException, context: grpc.ServicerContext, method_name: str) -> NoReturn:
    if not isinstance(error, ServiceError):
        logger.error("unexpected error in %s", method_name, exc_info=error)
        error = Internal("internal error; the server log has the details", reason="INTERNAL")
    context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))
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
    """Logs one line per RPC when it ends: method, status code, duration, peer."""

    def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.ServicerContext, method_name: str
    ) -> Any:
        started = time.perf_counter()
        try:
            result = method(request, context)
        except BaseException:
            _log(method_name, context, started, grpc.StatusCode.UNKNOWN)
            raise
        if inspect.isgenerator(result):
            return self._log_stream(result, context, method_name, started)
        _log(method_name, context, started, grpc.StatusCode.OK)
        return result

    @staticmethod
    def _log_stream(
        stream: Iterator[Any], context: grpc.ServicerContext, method_name: str, started: float
    ) -> Iterator[Any]:
        outcome = grpc.StatusCode.UNKNOWN
        try:
            yield from stream
            outcome = grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED
        except GeneratorExit:  # gRPC closes the stream's generator when the call is cancelled
            outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            _log(method_name, context, started, outcome)


def _log(method_name: str, context: grpc.ServicerContext, started: float, fallback: grpc.StatusCode) -> None:
    code = context.code() or fallback  # type: ignore[attr-defined]  # set when the handler aborted
    if isinstance(code, int):  # abort_with_status records the numeric code
        code = next((status for status in grpc.StatusCode if status.value[0] == code), fallback)
    access_logger.info(
        "%s %s %.1fms peer=%s",
        method_name,
        code.name,
        (time.perf_counter() - started) * 1000,
        context.peer(),
    )
