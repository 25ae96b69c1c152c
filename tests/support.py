"""Helpers for tests: unique ids, error details off the wire, short request builders."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Every call in the suite gets a deadline, so a hang fails a test instead of the run.
TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerAddress:
    target: str


def unique(prefix: str = "id") -> str:
    """An id no other test uses, so tests need not clean up after each other."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


@dataclass(frozen=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: dict[str, str]


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """The code, message, ErrorInfo and BadRequest field violations a failed call carried."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in {error!r}"
    reason, metadata, violations = "", {}, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "memstore"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = {v.field: v.description for v in bad.field_violations}
    return ErrorDetails(error.code(), error.details() or "", reason, metadata, violations)


def expect_error(call: Any, request: Any, code: grpc.StatusCode) -> ErrorDetails:
    """Make a unary ``call`` that must fail with ``code``; return what the failure carried."""
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        details = details_of(error)
        assert details.code == code, f"expected {code}, got {details.code}: {details.message}"
        return details
    raise AssertionError(f"expected {code}, but the call succeeded")


GRPCURL = Path(sys.executable).parent / "grpcurl"


def run_grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """The grpcurl binary of the dev install with ``args``; its exit code is for the caller to judge."""
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=30, check=False)
