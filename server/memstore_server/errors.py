"""Domain errors, one class per gRPC status code, and their one mapping to the wire.

Stores and validation raise these; only :func:`to_rpc_status` knows how they look
on the wire (a ``google.rpc.Status`` carrying an ``ErrorInfo`` and, for bad input,
a ``BadRequest``), so every RPC reports errors the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "memstore"

# A bad request can hold any number of violations, with paths as long as its keys, and a
# default client refuses trailers over 16 KiB (RESOURCE_EXHAUSTED instead of the error).
# So what is sent is bounded: at most this many violations, each clipped, and their count in
# ErrorInfo; the message names the first. Sent whole, an error stays under 8 KiB of trailers.
MAX_VIOLATIONS_SENT = 8
MAX_FIELD_CHARS = 160
MAX_DESCRIPTION_CHARS = 240


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. ``metadata.foo``) and what is wrong."""

    field: str
    description: str


class ServiceError(Exception):
    """An error meant for the caller: a status code, a message and a machine-readable reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation], *, reason: str = "INVALID_ARGUMENT") -> None:
        count = len(violations)
        self.violations = tuple(
            FieldViolation(_clip(v.field, MAX_FIELD_CHARS), _clip(v.description, MAX_DESCRIPTION_CHARS))
            for v in violations[:MAX_VIOLATIONS_SENT]
        )
        if not self.violations:
            message = "invalid request"
        else:
            first = self.violations[0]
            more = f" (and {count - 1} more; see the BadRequest details)" if count > 1 else ""
            message = f"{first.field}: {first.description}{more}"
        super().__init__(
            message, reason=reason, metadata={"violation_count": str(count)} if count > 1 else None
        )

    @classmethod
    def single(cls, field: str, description: str) -> InvalidArgument:
        """An error for one bad field, the common case."""
        return cls([FieldViolation(field, description)])


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def user_not_found(user_id: str) -> NotFound:
    return NotFound(f"user {user_id!r} not found", reason="USER_NOT_FOUND", metadata={"user_id": user_id})


def session_not_found(session_id: str) -> NotFound:
    return NotFound(
        f"session {session_id!r} not found", reason="SESSION_NOT_FOUND", metadata={"session_id": session_id}
    )


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status that carries ``error`` to the client."""
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    ]
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=_CODE_NUMBERS[error.code], message=error.message, details=details)


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}
