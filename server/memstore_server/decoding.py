"""Requests that do not parse are the caller's fault: INVALID_ARGUMENT, not INTERNAL.

gRPC Python answers a request it cannot deserialize (say, a string field holding
invalid UTF-8) with a bare INTERNAL. ``tolerant`` deserializes requests itself, so
such a request reaches the error boundary as an InvalidArgument naming the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from memstore_server.errors import InvalidArgument
from memstore_server.interceptors import Behaviour, MethodInfo


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer``, returning an _Undecodable instead of raising on bytes that do not parse."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(error)

    return deserialize


def reject_undecodable(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
    """The innermost wrapper: a request that did not parse becomes INVALID_ARGUMENT."""

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            raise InvalidArgument.single("request", f"is not a valid protobuf message: {request.error}")
        return behaviour(request, context)

    return checked
