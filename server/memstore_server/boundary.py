"""The error boundary: the only place where exceptions meet the wire.

A ServiceError becomes its google.rpc.Status (see errors.py); anything else is
logged in full and reaches the caller as a bare INTERNAL naming only the
request id, so no stack trace or SQL ever leaves the server. Every reply,
failed or not, carries its request id in trailing metadata.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_status import rpc_status

from memstore_server import request_context
from memstore_server.errors import Internal, ServiceError, to_rpc_status
from memstore_server.handlers import Behaviour, MethodInfo

logger = logging.getLogger(__name__)


class _StatusWithRequestId(grpc.Status):
    def __init__(self, status: grpc.Status, request_id: str) -> None:
        self.code = status.code
        self.details = status.details
        self.trailing_metadata = (*status.trailing_metadata, (request_context.REQUEST_ID_KEY, request_id))


def status_for(error: Exception, full_method: str) -> grpc.Status:
    """The status that reports ``error`` to the caller; logs what the caller must not see."""
    request_id = request_context.current()
    if not isinstance(error, ServiceError):
        logger.error("unexpected error in %s [request %s]", full_method, request_id, exc_info=error)
        error = Internal(
            f"internal error; the server log has the details under request id {request_id}", reason="INTERNAL"
        )
    return _StatusWithRequestId(rpc_status.to_status(to_rpc_status(error)), request_id)


def guard_errors(behaviour: Behaviour, info: MethodInfo) -> Behaviour:
    """Turns every exception of a handler, unary or streaming, into a clean status."""
    full_method = info.full_method

    async def guarded(request: Any, context: Any) -> Any:
        try:
            return await behaviour(request, context)
        except Exception as error:
            if context.done():  # already answered (aborted below us): nothing more to send
                raise
            await context.abort_with_status(status_for(error, full_method))

    return guarded
