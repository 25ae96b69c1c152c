"""The request id: one per RPC, in every log line about it and in the reply's trailing metadata.

An operator given the id by a caller (it arrives as ``x-request-id``) finds the
server's log lines about that call, including details never sent to the caller.
"""

from __future__ import annotations

import contextvars
import os

from opentelemetry import trace

REQUEST_ID_KEY = "x-request-id"
_MAX_INCOMING_LENGTH = 128

_current: contextvars.ContextVar[str] = contextvars.ContextVar("memstore_request_id", default="-")


def assign(incoming: str | None) -> str:
    """Use the caller's id when it is a sane one, else a fresh one; it becomes the current id."""
    if incoming and len(incoming) <= _MAX_INCOMING_LENGTH and incoming.isprintable():
        request_id = incoming
    else:
        # 128 random bits as 32 hex digits, the shape of a uuid4's hex, at a fifth of its cost.
        request_id = os.urandom(16).hex()
    _current.set(request_id)
    return request_id


def current() -> str:
    """The id of the RPC this thread is serving ("-" outside any RPC)."""
    return _current.get()


def trace_id() -> str:
    """The W3C trace id of the current span, or "-" when no trace is being recorded."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else "-"
