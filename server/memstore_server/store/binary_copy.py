"""One row of a query, read through ``COPY (query) TO STDOUT (FORMAT binary)``.

psycopg2 reads results in PostgreSQL's text format, where a ``bytea`` travels
hex-encoded, twice its size, and is decoded back on arrival: for a stream page of
stored users (store/users.py, ``framed_page``) that encoding and decoding cost more
than the query itself. COPY's binary format sends the value as it is stored, and
psycopg2 can read it (``copy_expert``). The format: a signature, flags and a
header extension, then per row a 16-bit field count and, per field, a 32-bit
length (-1 for NULL) and the value in the type's binary send format.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from typing import Any

import peewee

# Peewee's own translation of driver errors, as its playhouse modules use it; not in its stubs.
from peewee import __exception_wrapper__ as as_peewee_errors  # type: ignore[attr-defined]

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")

Decoder = Callable[[memoryview], Any]


def int8(value: memoryview) -> int:
    """A ``bigint`` in binary format."""
    return int(_INT64.unpack(value)[0])


def boolean(value: memoryview) -> bool:
    """A ``boolean`` in binary format."""
    return value[0] != 0


def bytea(value: memoryview) -> bytes:
    """A ``bytea`` in binary format: its bytes."""
    return bytes(value)


def first_row(
    db: peewee.Database, query: str, params: Sequence[Any], columns: Sequence[Decoder]
) -> list[Any]:
    """The first row of ``query`` (with %s ``params``, bound by the driver) decoded by ``columns``,
    one decoder per column; ``[]`` when it returns no row. Runs on ``db``'s current connection."""
    cursor = db.cursor()
    statement = cursor.mogrify(f"COPY ({query}) TO STDOUT WITH (FORMAT binary)", params)
    output = io.BytesIO()
    with as_peewee_errors:  # driver errors become peewee's, as for any query
        cursor.copy_expert(statement, output)
    data = output.getbuffer()
    if data[: len(_SIGNATURE)] != _SIGNATURE:
        raise ValueError("not a binary COPY stream")
    position = len(_SIGNATURE) + 4  # the flags field
    position += 4 + _INT32.unpack_from(data, position)[0]  # the header extension
    if _INT16.unpack_from(data, position)[0] != len(columns):  # -1: the trailer, no row
        return []
    position += 2
    values: list[Any] = []
    for decode in columns:
        length = _INT32.unpack_from(data, position)[0]
        position += 4
        if length < 0:
            values.append(None)
            continue
        values.append(decode(data[position : position + length]))
        position += length
    return values
