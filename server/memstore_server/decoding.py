"""Requests that do not parse are the caller's fault: INVALID_ARGUMENT, not INTERNAL.

gRPC Python answers a request it cannot deserialize (say, a string field holding
invalid UTF-8) with a bare INTERNAL. This interceptor parses requests itself, so
such a request reaches the error boundary as an InvalidArgument naming the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from memstore_server.errors import InvalidArgument


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(error)

    return deserialize


def _checked(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            raise InvalidArgument.single("request", f"is not a valid protobuf message: {request.error}")
        return behaviour(request, context)

    return run


class DecodeGuardInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Must be the innermost interceptor: outer ones copy the deserializer it installs."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _checked(handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            _checked(handler.unary_unary),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
