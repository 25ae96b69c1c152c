"""``memstore export``: every (matching) user, streamed through ListUsersChunked, as JSONL or Parquet.

Memory stays constant whatever the table's size: one stream message (and, for
Parquet, one row group) at a time. The resume token of the manifest is taken
before the first user is read, so ``memstore watch --since`` replays every change
made while the export ran (at least once) and nothing is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from memstore.v1 import users_pb2

from memstore_client._transport import ResumePolicy
from memstore_client.cli import parquet, progress
from memstore_client.cli.connection import Connection, server_failure
from memstore_client.cli.exits import USAGE_ERROR, CommandError
from memstore_client.cli.output import AtomicFile, HashingWriter, stdout_writer, write_atomically
from memstore_client.cli.parallel import Converter
from memstore_client.cli.watch import current_resume_token
from memstore_client.errors import translate

CHUNK_SIZE = 1000
_LIST_USERS_CHUNKED = "/memstore.v1.UserService/ListUsersChunked"
FORMATS = ("jsonl", "parquet")


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
    """One JSON object per user and line, UTF-8, converted by a Converter (maybe in workers)."""

    def __init__(self, out: HashingWriter, converter: Converter) -> None:
        self._out = out
        self._converter = converter

    def write(self, data: bytes) -> int:
        return self._put(self._converter.convert(data))

    def close(self) -> int:
        try:
            count = self._put(self._converter.finish())
        finally:
            self._converter.close()
        self._out.flush()
        return count

    def abort(self) -> None:
        self._converter.close()

    def _put(self, blocks: Iterator[tuple[bytes, int]]) -> int:
        count = 0
        for block, users in blocks:
            if block:
                self._out.write(block)
            count += users
        return count


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
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="JSONL: worker processes turning users into JSON (default: 1, this process); more pays "
        "only where the command has cores to itself, not beside the server and its database",
    )
    parser.add_argument(
        "--filter",
        metavar="F",
        help="only users matching this filter (ListUsersChunkedRequest.filter), "
        "e.g. 'metadata.plan = \"pro\"'",
    )
    return parser


def run(args: argparse.Namespace, connection: Connection) -> int:
    if args.jobs < 1:
        raise CommandError("--jobs must be at least 1", USAGE_ERROR)
    request = _request(args.filter)
    if args.format == "parquet":
        parquet.pyarrow()  # a missing extra is reported before anything is written
        if args.out is None and sys.stdout.isatty():
            raise CommandError("Parquet is binary: give --out PATH, or redirect stdout", USAGE_ERROR)
    started = time.monotonic()
    if args.out is None:
        writer = stdout_writer()
        count = _export(connection, request, _sink(args, writer))
    else:
        with AtomicFile(args.out) as target:
            token = current_resume_token(connection)  # before the first user is read
            writer = target.writer
            count = _export(connection, request, _sink(args, writer))
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


def _request(filter_text: str | None) -> users_pb2.ListUsersChunkedRequest:
    return users_pb2.ListUsersChunkedRequest(chunk_size=CHUNK_SIZE, filter=filter_text or "")


def _sink(args: argparse.Namespace, writer: HashingWriter) -> Sink:
    if args.format == "parquet":
        return ParquetMessages(writer)
    return JsonLinesSink(writer, Converter(args.jobs))


def _export(connection: Connection, request: users_pb2.ListUsersChunkedRequest, sink: Sink) -> int:
    count = 0
    with progress.bar("exporting", total=_total(connection, request.filter)) as bar:
        try:
            for data in messages(connection, request):
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


def _cursor_reader() -> Callable[[bytes], int]:
    """``next_cursor`` of a serialized ListUsersChunkedResponse, without parsing its users.

    A message type holding only field 2 reads the rest as unknown bytes, at about
    a hundredth of the cost of parsing the users, which the workers parse.
    """
    file = descriptor_pb2.FileDescriptorProto(name="memstore_cli_cursor.proto", package="memstore_cli")
    file.message_type.add(name="Cursor").field.add(
        name="next_cursor",
        number=users_pb2.ListUsersChunkedResponse.DESCRIPTOR.fields_by_name["next_cursor"].number,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    cursor_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("memstore_cli.Cursor"))
    return lambda data: int(cursor_class.FromString(data).next_cursor)  # type: ignore[attr-defined]


def messages(connection: Connection, request: users_pb2.ListUsersChunkedRequest) -> Iterator[bytes]:
    """Every ListUsersChunked message, serialized, resuming a broken stream from its last cursor."""
    next_cursor = _cursor_reader()
    call = connection.channel.unary_stream(
        _LIST_USERS_CHUNKED,
        request_serializer=users_pb2.ListUsersChunkedRequest.SerializeToString,
        response_deserializer=None,
    )
    policy = ResumePolicy()
    failures = 0
    while True:
        stream: Any = call(request, metadata=connection.metadata)
        received = False
        try:
            for data in stream:
                failures, received = 0, True
                yield data
                cursor = next_cursor(data)
                if cursor == 0:
                    return
                request.cursor = cursor
            if not received:
                return  # no (more) users after the cursor
            # It ended without its last message (next_cursor 0): ask again from where it stopped.
        except grpc.RpcError as error:
            failures += 1
            delay = policy.delay(error.code(), failures)
            if delay is None:
                failure = translate(error)
                if failure.reason == "INVALID_FILTER":
                    raise CommandError(f"--filter: {failure.message}", USAGE_ERROR) from None
                raise server_failure(failure, "ListUsersChunked") from None
            time.sleep(delay)
        finally:
            stream.cancel()
