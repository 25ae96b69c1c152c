"""One exception class per meaningful gRPC status, all under MemstoreError.

A caller catches ``NotFoundError`` rather than comparing status codes, and still
has the code, the message and the server's machine-readable ``reason`` (from the
``google.rpc.ErrorInfo`` the server attaches) when it needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

# Where gRPC servers put the serialized google.rpc.Status of a failed call.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as the server reported it."""

    field: str
    description: str


class MemstoreError(Exception):
    """A call to memstore failed.

    Attributes: ``code`` (grpc.StatusCode), ``message`` (the server's words),
    ``reason`` (the ErrorInfo reason, e.g. ``USER_NOT_FOUND``, or "" when none came),
    ``metadata`` (ErrorInfo metadata, e.g. ``{"user_id": "..."}``).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.field_violations = field_violations


class InvalidArgumentError(MemstoreError):
    """The request broke an input rule; ``field_violations`` names every bad field."""


class NotFoundError(MemstoreError):
    """The user or session does not exist."""


class AlreadyExistsError(MemstoreError):
    """The user_id or session_id is taken."""


class FailedPreconditionError(MemstoreError):
    """The server is not in a state to do this (e.g. its database is newer than it)."""


class OutOfRangeError(MemstoreError):
    """A value is outside what the server accepts."""


class AuthError(MemstoreError):
    """The call was not authenticated (UNAUTHENTICATED) or not allowed (PERMISSION_DENIED)."""


class UnavailableError(MemstoreError):
    """The server or its database cannot be reached now; retrying later may succeed."""


class DeadlineExceededError(MemstoreError):
    """The call did not finish before its deadline."""


class ResourceExhaustedError(MemstoreError):
    """A limit was hit (message size, rate); the message says which."""


class CancelledError(MemstoreError):
    """The call was cancelled."""


class InternalError(MemstoreError):
    """The server failed unexpectedly; its log has the details."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[MemstoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_from_status(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> MemstoreError:
    """The MemstoreError subclass for ``code``, filled from the rich status when there is one."""
    reason, metadata = "", {}
    violations: tuple[FieldViolation, ...] = ()
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations = tuple(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
    error_class = _CLASS_BY_CODE.get(code, MemstoreError)
    return error_class(code, message, reason=reason, metadata=metadata, field_violations=violations)


def rich_status(trailing_metadata: object) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carried in its trailers, if any."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def translate(error: grpc.RpcError) -> MemstoreError:
    """The MemstoreError for a failed call, sync (grpc.Call) or async (grpc.aio.AioRpcError)."""
    call: grpc.Call = error  # type: ignore[assignment]
    return error_from_status(call.code(), call.details() or "", rich_status(call.trailing_metadata()))
