"""Each stored user's length as a protobuf varint, so streams are framed inside PostgreSQL.

A stream chunk is, per user, the tag of the repeated field, the length of the
user's stored bytes as a varint, and the bytes. Built by ``string_agg`` in the
query, a page of a thousand users reaches the server as one value instead of a
thousand rows, and nothing is done per user in Python (store/users.py).

The varint is a generated column, computed by PostgreSQL whenever ``message``
is written, by whatever statement: working it out at read time cost a third of
the page query. The tag stays out of the schema (the query takes it from the
contract's descriptors). Adding the column rewrites the table once (about 5 s
per million users here).

The function is plain SQL (no PL/pgSQL) and IMMUTABLE, as a generated column
requires; not STRICT, so the planner can inline it. Five bytes of varint cover
lengths below 2^35, far above any message gRPC sends.
"""

from __future__ import annotations

import peewee

from memstore_server.migrations import Migration

_VARINT = r"""
CREATE OR REPLACE FUNCTION memstore_protobuf_varint(value bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN value < 128 THEN
        set_byte('\x00'::bytea, 0, value::int)
    WHEN value < 16384 THEN
        set_byte(set_byte('\x0000'::bytea,
            0, (value & 127)::int | 128),
            1, (value >> 7)::int)
    WHEN value < 2097152 THEN
        set_byte(set_byte(set_byte('\x000000'::bytea,
            0, (value & 127)::int | 128),
            1, ((value >> 7) & 127)::int | 128),
            2, (value >> 14)::int)
    WHEN value < 268435456 THEN
        set_byte(set_byte(set_byte(set_byte('\x00000000'::bytea,
            0, (value & 127)::int | 128),
            1, ((value >> 7) & 127)::int | 128),
            2, ((value >> 14) & 127)::int | 128),
            3, (value >> 21)::int)
    ELSE
        set_byte(set_byte(set_byte(set_byte(set_byte('\x0000000000'::bytea,
            0, (value & 127)::int | 128),
            1, ((value >> 7) & 127)::int | 128),
            2, ((value >> 14) & 127)::int | 128),
            3, ((value >> 21) & 127)::int | 128),
            4, (value >> 28)::int)
END
$$
"""


def apply(db: peewee.Database) -> None:
    db.execute_sql(_VARINT)
    db.execute_sql(
        "ALTER TABLE users ADD COLUMN message_length_varint bytea "
        "GENERATED ALWAYS AS (memstore_protobuf_varint(length(message))) STORED"
    )


MIGRATION = Migration(version=6, name="message_length_varint", apply=apply)
