"""Stream pages framed by PostgreSQL: the varint it computes, and rows read through binary COPY."""

from __future__ import annotations

import peewee
import pytest
from google.protobuf import wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from memstore_server.database import connection
from memstore_server.store import binary_copy


def protobuf_varint(value: int) -> bytes:
    """``value`` as protobuf writes a varint: a UInt64Value's one field, less its tag."""
    return wrappers_pb2.UInt64Value(value=value).SerializeToString()[1:] or b"\x00"


_BOUNDARIES = [0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**35 - 1]


@pytest.mark.parametrize("value", _BOUNDARIES)
def test_the_sql_varint_is_protobufs_at_every_width(db: peewee.Database, value: int) -> None:
    with connection(db):
        (encoded,) = db.execute_sql("SELECT memstore_protobuf_varint(%s)", (value,)).fetchone()
    assert bytes(encoded) == protobuf_varint(value)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**35 - 1))
def test_the_sql_varint_is_protobufs_for_any_length(db: peewee.Database, value: int) -> None:
    with connection(db):
        (encoded,) = db.execute_sql("SELECT memstore_protobuf_varint(%s)", (value,)).fetchone()
    assert bytes(encoded) == protobuf_varint(value)


SMALLEST = -(2**63) + 1  # -(2**63) itself is no literal PostgreSQL parses as a bigint
AWKWARD = b"\x00\xff'\\"  # NUL, a high byte, a quote and a backslash


def test_a_row_arrives_with_every_type_and_null(db: peewee.Database) -> None:
    columns = (binary_copy.int8, binary_copy.boolean, binary_copy.bytea, binary_copy.int8)
    with connection(db):
        row = binary_copy.first_row(
            db, "SELECT %s::bigint, %s, %s::bytea, NULL::bigint", (SMALLEST, True, AWKWARD), columns
        )
    assert row == [SMALLEST, True, AWKWARD, None]


def test_no_row_is_an_empty_list(db: peewee.Database) -> None:
    with connection(db):
        assert binary_copy.first_row(db, "SELECT 1::bigint WHERE false", (), (binary_copy.int8,)) == []


def test_parameters_are_bound_by_the_driver_not_spliced(db: peewee.Database) -> None:
    hostile = "x'); DROP TABLE users; --"
    with connection(db):
        row = binary_copy.first_row(db, "SELECT %s::bytea", (hostile.encode(),), (binary_copy.bytea,))
        assert row == [hostile.encode()]
        assert db.execute_sql("SELECT to_regclass('users') IS NOT NULL").fetchone()[0]


def test_driver_errors_become_peewees(db: peewee.Database) -> None:
    with connection(db), pytest.raises(peewee.ProgrammingError):
        binary_copy.first_row(db, "SELECT no_such_column FROM users", (), (binary_copy.int8,))
