"""Users as the command writes and reads them: JSON objects with the API's field names.

``memstore watch`` and the Parquet export run this once per user, so it reads the
generated messages directly (no dataclass, no json_format) and formats timestamps
from a per-second cache: at that rate, building intermediate objects is most of
the cost. (A JSONL export's lines are the server's: ExportUsers.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from memstore.v1 import users_pb2

# Field names in the order of the User message; the JSONL line and the Parquet columns use them.
FIELDS = tuple(field.name for field in users_pb2.User.DESCRIPTOR.fields)
# What an import sends; the server assigns the rest, so they are read past.
IMPORTED = ("user_id", "email", "first_name", "last_name", "metadata")
ASSIGNED_BY_SERVER = frozenset(FIELDS) - frozenset(IMPORTED)
# Whole-number doubles within +-2**53 are exactly one integer: write them as integers.
_LARGEST_EXACT_INTEGER = 2**53


def _unencodable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON text of a value, UTF-8 as it is (no \\u escapes), object keys sorted.

    Sorted keys make the same users export to the same bytes (and sha256) every
    time: a Struct's keys come out of its map in an order that varies between
    processes. The C encoder called directly costs a third of ``JSONEncoder.encode``,
    whose Python wrapper dominates for small objects; JSONEncoder where there is no C.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    escape = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or escape is None:
        return json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), check_circular=False, sort_keys=True
        ).encode
    chunks = make(None, _unencodable, escape, None, ":", ",", True, False, True)
    return lambda value: "".join(chunks(value, 0))


encode = _compact_encoder()


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) <= _LARGEST_EXACT_INTEGER else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        fields = value.struct_value.fields
        return {key: _value(fields[key]) for key in fields}
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None


def metadata_of(user: users_pb2.User) -> dict[str, Any]:
    """The user's metadata as a plain JSON object (integers as integers).

    Keys then lookups: a protobuf map's ``items()`` is the Mapping mixin's, in Python.
    """
    fields = user.metadata.fields
    return {key: _value(fields[key]) for key in fields}


class Timestamps:
    """RFC 3339 UTC text of protobuf timestamps, microsecond precision (PostgreSQL's)."""

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def text(self, stamp: timestamp_pb2.Timestamp) -> str:
        seconds = stamp.seconds
        prefix = self._seconds.get(seconds)
        if prefix is None:
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            prefix = self._seconds[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        micros = stamp.nanos // 1000
        return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


def user_object(user: users_pb2.User, stamps: Timestamps) -> dict[str, Any]:
    """Every field of the user, with the API's names; ``id`` and ``session_count`` as numbers."""
    return {
        "user_id": user.user_id,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "metadata": metadata_of(user),
        "uuid": user.uuid,
        "id": user.id,
        "created_at": stamps.text(user.created_at),
        "updated_at": stamps.text(user.updated_at),
        "session_count": user.session_count,
    }


def metadata_json(user: users_pb2.User) -> str:
    return encode(metadata_of(user))


@dataclass(frozen=True)
class RecordError(Exception):
    """An input record that cannot become a CreateUserRequest: which field, and why."""

    field: str
    description: str


def create_request(record: Any) -> users_pb2.CreateUserRequest:
    """The CreateUserRequest of one input record (a JSON object, or a Parquet row as a dict).

    Only the shape is checked here (types, unknown fields); the server checks the
    values, and its answers are mapped back to the record's line.
    """
    if not isinstance(record, Mapping):
        raise RecordError("", f"expected a JSON object, got {_json_type(record)}")
    for key in record:
        if key not in IMPORTED and key not in ASSIGNED_BY_SERVER:
            raise RecordError(str(key), "unknown field (a user has: " + ", ".join(FIELDS) + ")")
    user_id = record.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise RecordError("user_id", "required: a non-empty string")
    texts: dict[str, str] = {}
    for name in ("email", "first_name", "last_name"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordError(name, f"expected a string, got {_json_type(value)}")
        texts[name] = value or ""
    metadata = record.get("metadata")
    struct = None
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise RecordError("metadata", f"expected a JSON object, got {_json_type(metadata)}")
        struct = struct_pb2.Struct()
        try:
            struct.update(metadata)
        except (ValueError, TypeError) as error:
            raise RecordError("metadata", f"not storable: {error}") from None
    return users_pb2.CreateUserRequest(user_id=user_id, metadata=struct, **texts)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
