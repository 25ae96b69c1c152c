"""Parquet files of users, through pyarrow (the ``memstore-client[parquet]`` extra).

Columns are typed: ``id`` and ``session_count`` int64, ``created_at`` and
``updated_at`` timestamps in UTC (microseconds, PostgreSQL's precision),
``metadata`` the JSON text of the object (Parquet has no type for free-form
JSON that every reader understands), every other field a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memstore_client.cli.exits import DATA_ERROR, USAGE_ERROR, CommandError
from memstore_client.cli.output import HashingWriter
from memstore_client.cli.records import RecordError, metadata_json

# Rows per row group: enough for efficient columns, few enough to keep the export's memory small.
ROW_GROUP = 65_536
MAGIC = b"PAR1"


def pyarrow() -> Any:
    """The pyarrow module, or a usage error saying how to install it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet
    except ImportError:
        raise CommandError(
            "Parquet needs pyarrow, which is not installed: pip install 'memstore-client[parquet]'",
            USAGE_ERROR,
        ) from None
    return pa


def schema() -> Any:
    pa = pyarrow()
    stamp = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("user_id", pa.string()),
            ("email", pa.string()),
            ("first_name", pa.string()),
            ("last_name", pa.string()),
            ("metadata", pa.string()),
            ("uuid", pa.string()),
            ("id", pa.int64()),
            ("created_at", stamp),
            ("updated_at", stamp),
            ("session_count", pa.int64()),
        ]
    )


def _micros(stamp: Any) -> int:
    return int(stamp.seconds) * 1_000_000 + int(stamp.nanos) // 1000


class ParquetSink:
    """Writes users to a Parquet stream, one row group per ROW_GROUP users."""

    def __init__(self, out: HashingWriter) -> None:
        self._pa = pyarrow()
        self._schema = schema()
        self._writer = self._pa.parquet.ParquetWriter(out, self._schema, compression="zstd")
        self._columns: list[list[Any]] = [[] for _ in self._schema.names]

    def write(self, users: Any) -> None:
        (user_id, email, first, last, metadata, uuid, ids, created, updated, sessions) = self._columns
        for user in users:
            user_id.append(user.user_id)
            email.append(user.email)
            first.append(user.first_name)
            last.append(user.last_name)
            metadata.append(metadata_json(user))
            uuid.append(user.uuid)
            ids.append(user.id)
            created.append(_micros(user.created_at))
            updated.append(_micros(user.updated_at))
            sessions.append(user.session_count)
        if len(ids) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._columns[0]:
            return
        arrays = [
            self._pa.array(values, type=field.type)
            for values, field in zip(self._columns, self._schema, strict=True)
        ]
        self._writer.write_batch(self._pa.record_batch(arrays, schema=self._schema))
        self._columns = [[] for _ in self._schema.names]

    def close(self) -> None:
        self._flush()
        self._writer.close()


def rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number from 1, record) of every row; ``metadata`` parsed from its JSON text.

    A row whose metadata is not JSON is passed on as a RecordError for the caller to report.
    """
    pa = pyarrow()
    try:
        source = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise CommandError(f"{path}: not a readable Parquet file: {error}", DATA_ERROR) from None
    number = 0
    for batch in source.iter_batches(batch_size=ROW_GROUP):
        for record in batch.to_pylist():
            number += 1
            text = record.get("metadata")
            if isinstance(text, str):
                try:
                    record["metadata"] = json.loads(text)
                except ValueError as error:
                    yield number, RecordError("metadata", f"not JSON text: {error}")
                    continue
            yield number, record


def row_count(path: Path) -> int | None:
    try:
        return int(pyarrow().parquet.ParquetFile(path).metadata.num_rows)
    except Exception:  # the reader reports the same problem properly
        return None
