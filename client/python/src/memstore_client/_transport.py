"""What every call shares: channel options (retries, keepalive), credentials, and resume policy.

Retries of UNAVAILABLE are left to gRPC's own service-config retry policy, and
only for calls that are safe to repeat (reads); a write that may already have
been applied is never sent twice behind the caller's back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

USER_SERVICE = "memstore.v1.UserService"
SESSION_SERVICE = "memstore.v1.SessionService"
IDEMPOTENT_METHODS = (
    (USER_SERVICE, "GetUser"),
    (USER_SERVICE, "ListUsers"),
    (USER_SERVICE, "ListUsersChunked"),
    (USER_SERVICE, "GetUserSessions"),
    (SESSION_SERVICE, "GetSession"),
    (SESSION_SERVICE, "ListSessions"),
)
DEFAULT_TIMEOUT = 10.0

_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

ChannelOptions = Sequence[tuple[str, int | str]]


def channel_options(extra: ChannelOptions = ()) -> list[tuple[str, int | str]]:
    """Options for a channel to memstore: retries for reads, keepalive for long streams."""
    return [
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        # Notice a dead peer on a long-lived stream within about a minute and a half.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        *extra,
    ]


def channel_credentials(tls: bool | grpc.ChannelCredentials) -> grpc.ChannelCredentials | None:
    """None for plaintext; the system's roots for ``tls=True``; or the caller's credentials."""
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    return grpc.ssl_channel_credentials() if tls else None


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the bearer token when there is one."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


@dataclass(frozen=True)
class ResumePolicy:
    """When a broken ListUsersChunked stream is resumed from its last cursor, and after how long.

    The count of failures resets whenever a chunk arrives, so a long pipeline that
    meets an occasional restart keeps going, while a server that stays down fails
    after ``max_attempts`` tries in a row.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retryable: frozenset[grpc.StatusCode] = frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL}
    )

    def delay(self, code: grpc.StatusCode, failures_in_a_row: int) -> float | None:
        """Seconds to wait before resuming after the n-th failure in a row, or None to give up."""
        if code not in self.retryable or failures_in_a_row >= self.max_attempts:
            return None
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures_in_a_row - 1)))


def chunk_size_argument(chunk_size: int, chunkSize: int | None) -> int:  # noqa: N803
    """``list_chunked``'s chunk size, given as ``chunk_size`` or as the reference page's ``chunkSize``."""
    if chunkSize is None:
        return chunk_size
    if chunk_size not in (100, chunkSize):
        raise TypeError("list_chunked() got both chunk_size and chunkSize; give one")
    return chunkSize
