"""Protobuf fields and gRPC messages framed by hand, for the benchmark's clients and small servers.

The bench sends pre-serialized requests and, in its minimal servers, answers with
stored bytes, so it needs the few encodings below and nothing of a message class.
They are written here rather than imported from the server, so that the bench keeps
working while the server's internals change.
"""

from __future__ import annotations

from collections.abc import Iterable

_VARINT = 0
_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field: a message, a string or bytes."""
    return varint(field_number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def repeated(field_number: int, payloads: Iterable[bytes]) -> bytes:
    """A repeated message field: one length-delimited field per payload, the tag encoded once."""
    tag = varint(field_number << 3 | _LENGTH_DELIMITED)
    return b"".join(tag + varint(len(payload)) + payload for payload in payloads)


def int_field(field_number: int, value: int) -> bytes:
    """An int64 field; nothing for 0, as proto3 leaves defaults out."""
    if value == 0:
        return b""
    return varint(field_number << 3 | _VARINT) + varint(value)


def grpc_message(message: bytes) -> bytes:
    """``message`` as one gRPC length-prefixed message (not compressed): what h2load must send."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
