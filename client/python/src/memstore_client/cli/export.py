"""``memstore export``: every (matching) user, as JSONL (ExportUsers) or Parquet (ListUsersChunked).

JSONL comes from ExportUsers, whose lines the server's database builds, so the
command only writes bytes: turning users into JSON in Python costs about 9 µs
each, four times what streaming them costs in all. Parquet's columns are built
by pyarrow from the users of ListUsersChunked. Memory stays constant whatever the
table's size: one stream message (and, for Parquet, one row group) at a time.
The resume token of the manifest is taken before the first user is read, so
``memstore watch --since`` replays every change made while the export ran (at
least once) and nothing is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from memstore.v1 import users_pb2

from memstore_client._resuming import resumed
from memstore_client._transport import ResumePolicy
from memstore_client.cli import parquet, progress
from memstore_client.cli.connection import Connection, server_failure
from memstore_client.cli.exits import USAGE_ERROR, CommandError
from memstore_client.cli.output import AtomicFile, HashingWriter, stdout_writer, write_atomically
from memstore_client.cli.watch import current_resume_token
from memstore_client.errors import MemstoreError

CHUNK_SIZE = 1000
FORMATS = ("jsonl", "parquet")
T = TypeVar("T")


class Sink(Protocol):
    def write(self, data: bytes) -> int:
        """Take one serialized ListUsersChunkedResponse; return the users written meanwhile."""
        ...

    def close(self) -> int:
        """Write what is left; return the users written meanwhile."""
        ...

    def abort(self) -> None:
        """Stop at once, writing nothing more (the export failed or was interrupted)."""
        ...


class JsonLinesSink:
    """The lines of each ExportUsersResponse, written as they came (UTF-8, each ending in a newline)."""

    def __init__(self, out: HashingWriter) -> None:
        self._out = out
        # The lines as the UTF-8 bytes that came, not decoded to text to be encoded back.
        self._lines_of = _field_reader(
            users_pb2.ExportUsersResponse, "json_lines", descriptor_pb2.FieldDescriptorProto.TYPE_BYTES, bytes
        )

    def write(self, data: bytes) -> int:
        lines = self._lines_of(data)
        self._out.write(lines)
        return lines.count(b"\n")  # JSON escapes newlines inside strings: one per user

    def close(self) -> int:
        self._out.flush()
        return 0

    def abort(self) -> None:
        """Nothing to stop: the file is written in this process, and discarded."""


class ParquetMessages:
    """Parquet rows of each stream message, parsed here (pyarrow builds the columns)."""

    def __init__(self, out: HashingWriter) -> None:
        self._sink = parquet.ParquetSink(out)

    def write(self, data: bytes) -> int:
        users = users_pb2.ListUsersChunkedResponse.FromString(data).users
        self._sink.write(users)
        return len(users)

    def close(self) -> int:
        self._sink.close()
        return 0

    def abort(self) -> None:
        """Nothing to stop: the file is written in this process, and discarded."""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "export",
        help="write every user as JSON lines or Parquet",
        description="Write every user (or those matching --filter), streamed through ListUsersChunked. "
        "JSONL: one object per line with the API's field names, id and session_count as numbers, "
        "timestamps in RFC 3339, metadata an object. Parquet: typed columns, metadata as JSON text. "
        "With --out PATH the file appears whole when the export is complete, and PATH.manifest.json "
        "records the format, the count, the file's sha256 and a resume_token taken before the export "
        "began: `memstore watch --since TOKEN` continues from it with nothing missed.",
    )
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="file format (default: jsonl)")
    parser.add_argument(
        "--out", type=Path, metavar="PATH", help="write to PATH (and PATH.manifest.json); default: stdout"
    )
    parser.add_argument(
        "--filter",
        metavar="F",
        help="only users matching this filter (ListUsersChunkedRequest.filter), "
        "e.g. 'metadata.plan = \"pro\"'",
    )
    return parser


def run(args: argparse.Namespace, connection: Connection) -> int:
    if args.format == "parquet":
        parquet.pyarrow()  # a missing extra is reported before anything is written
        if args.out is None and sys.stdout.isatty():
            raise CommandError("Parquet is binary: give --out PATH, or redirect stdout", USAGE_ERROR)
    started = time.monotonic()
    if args.out is None:
        writer = stdout_writer()
        count = _export(connection, args, writer)
    else:
        with AtomicFile(args.out) as target:
            token = current_resume_token(connection)  # before the first user is read
            writer = target.writer
            count = _export(connection, args, writer)
            target.commit()
        manifest = {
            "format": args.format,
            "count": count,
            "sha256": writer.sha256,
            "bytes": writer.size,
            "resume_token": token,
            "filter": args.filter or "",
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "file": args.out.name,
        }
        write_atomically(manifest_path(args.out), (json.dumps(manifest, indent=2) + "\n").encode())
    seconds = time.monotonic() - started
    print(
        f"memstore: exported {count:,} users in {seconds:.2f}s"
        + (f" to {args.out} (manifest {manifest_path(args.out)})" if args.out else ""),
        file=sys.stderr,
    )
    return 0


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def _export(connection: Connection, args: argparse.Namespace, writer: HashingWriter) -> int:
    filter_text = args.filter or ""
    sink: Sink
    if args.format == "parquet":
        sink, stream = ParquetMessages(writer), _LIST_USERS_CHUNKED
        request: Any = users_pb2.ListUsersChunkedRequest(chunk_size=CHUNK_SIZE, filter=filter_text)
    else:
        sink, stream = JsonLinesSink(writer), _EXPORT_USERS
        request = users_pb2.ExportUsersRequest(filter=filter_text)
    count = 0
    with progress.bar("exporting", total=_total(connection, filter_text)) as bar:
        try:
            for data in stream.messages(connection, request):
                written = sink.write(data)
                count += written
                bar.update(written)
        except BaseException:
            sink.abort()
            raise
        written = sink.close()
        count += written
        bar.update(written)
    return count


def _total(connection: Connection, filter_text: str) -> int | None:
    """How many users the progress bar expects (asked only when one is drawn); None if unknown."""
    if not progress.shown():
        return None
    try:
        response = connection.users.CountUsers(
            users_pb2.CountUsersRequest(filter=filter_text), timeout=30, metadata=connection.metadata
        )
    except grpc.RpcError:
        return None  # the export reports the server's errors itself
    return int(response.count)


def _field_reader(
    message: type[Any], name: str, kind: int, python_type: Callable[[Any], T]
) -> Callable[[bytes], T]:
    """Field ``name`` of a serialized ``message``, without parsing the rest: a message type
    holding only that field reads the others as unknown bytes, at about a hundredth of the
    cost of parsing the users."""
    file = descriptor_pb2.FileDescriptorProto(name=f"memstore_cli_{name}.proto", package="memstore_cli")
    file.message_type.add(name="View").field.add(
        name=name,
        number=message.DESCRIPTOR.fields_by_name[name].number,
        type=kind,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    view = message_factory.GetMessageClass(pool.FindMessageTypeByName("memstore_cli.View"))
    return lambda data: python_type(getattr(view.FromString(data), name))


@dataclass(frozen=True)
class Stream:
    """A server stream of users with cursors: ListUsersChunked or ExportUsers."""

    method: str
    request_type: type[Any]
    response_type: type[Any]
    # ListUsersChunked says its last message is the last (next_cursor 0); an ExportUsers
    # stream is complete when it ends without an error.
    last_has_cursor_0: bool

    def messages(self, connection: Connection, request: Any) -> Iterator[bytes]:
        """Every message, serialized, resuming a broken stream from its last cursor."""
        next_cursor = _field_reader(
            self.response_type, "next_cursor", descriptor_pb2.FieldDescriptorProto.TYPE_INT64, int
        )
        call = connection.channel.unary_stream(
            self.method, request_serializer=self.request_type.SerializeToString, response_deserializer=None
        )

        def open_stream(after: int) -> Iterable[bytes]:
            request.cursor = after
            stream: Iterable[bytes] = call(request, metadata=connection.metadata)
            return stream

        try:
            yield from resumed(
                open_stream,
                request.cursor,
                ResumePolicy(),
                last_has_cursor_0=self.last_has_cursor_0,
                cursor_of=next_cursor,
            )
        except MemstoreError as failure:
            if failure.reason == "INVALID_FILTER":
                raise CommandError(f"--filter: {failure.message}", USAGE_ERROR) from None
            raise server_failure(failure, self.method.rsplit("/", 1)[-1]) from None


_LIST_USERS_CHUNKED = Stream(
    "/memstore.v1.UserService/ListUsersChunked",
    users_pb2.ListUsersChunkedRequest,
    users_pb2.ListUsersChunkedResponse,
    last_has_cursor_0=True,
)
_EXPORT_USERS = Stream(
    "/memstore.v1.UserService/ExportUsers",
    users_pb2.ExportUsersRequest,
    users_pb2.ExportUsersResponse,
    last_has_cursor_0=False,
)
