"""Protobuf wire encoding by hand, for responses assembled from stored serialized users.

A user's serialized ``User`` message is kept in the database (see store/user_messages.py),
so the hot read paths send bytes instead of building messages: a response is its
fields' tags, lengths and payloads concatenated, exactly as protobuf would encode it.
"""

from __future__ import annotations

from collections.abc import Iterable

_WIRE_VARINT = 0
_WIRE_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """``value`` (non-negative, or a negative int64 as protobuf writes it) as a base-128 varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (a message, string or bytes)."""
    return varint(field_number << 3 | _WIRE_LENGTH_DELIMITED) + varint(len(payload)) + payload


def repeated(field_number: int, payloads: Iterable[bytes]) -> bytes:
    """A repeated message field: one length-delimited field per payload."""
    tag = varint(field_number << 3 | _WIRE_LENGTH_DELIMITED)
    return b"".join(tag + varint(len(payload)) + payload for payload in payloads)


def int_field(field_number: int, value: int) -> bytes:
    """An int64/int32 field; nothing at all for 0, as proto3 leaves defaults out."""
    if value == 0:
        return b""
    return varint(field_number << 3 | _WIRE_VARINT) + varint(value)


def field_size(field_number: int, payload_length: int) -> int:
    """Bytes a length-delimited field of ``payload_length`` bytes takes on the wire."""
    return (
        len(varint(field_number << 3 | _WIRE_LENGTH_DELIMITED)) + len(varint(payload_length)) + payload_length
    )
