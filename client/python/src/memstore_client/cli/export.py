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
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import grpc
from memstore.v1 import users_pb2

from memstore_client._transport import ResumePolicy
from memstore_client.cli import parquet, progress
from memstore_client.cli.connection import Connection, server_failure
from memstore_client.cli.exits import USAGE_ERROR, CommandError
from memstore_client.cli.output import AtomicFile, HashingWriter, stdout_writer, write_atomically
from memstore_client.cli.records import Timestamps, json_line
from memstore_client.cli.watch import current_resume_token
from memstore_client.errors import translate

CHUNK_SIZE = 1000
FORMATS = ("jsonl", "parquet")


class Sink(Protocol):
    def write(self, users: Any) -> None: ...
    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per user and line, UTF-8."""

    def __init__(self, out: HashingWriter) -> None:
        self._out = out
        self._stamps = Timestamps()

    def write(self, users: Any) -> None:
        stamps = self._stamps
        lines = [json_line(user, stamps) for user in users]
        if lines:
            lines.append("")
            self._out.write("\n".join(lines).encode("utf-8"))

    def close(self) -> None:
        self._out.flush()


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
    request = _request(args.filter)
    if args.format == "parquet":
        parquet.pyarrow()  # a missing extra is reported before anything is written
        if args.out is None and sys.stdout.isatty():
            raise CommandError("Parquet is binary: give --out PATH, or redirect stdout", USAGE_ERROR)
    started = time.monotonic()
    if args.out is None:
        writer = stdout_writer()
        count = _export(connection, request, _sink(args.format, writer))
    else:
        with AtomicFile(args.out) as target:
            token = current_resume_token(connection)  # before the first user is read
            writer = target.writer
            count = _export(connection, request, _sink(args.format, writer))
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
    request = users_pb2.ListUsersChunkedRequest(chunk_size=CHUNK_SIZE)
    if filter_text:
        if "filter" not in users_pb2.ListUsersChunkedRequest.DESCRIPTOR.fields_by_name:
            raise CommandError(
                "--filter needs a memstore-client whose ListUsersChunkedRequest has a filter field",
                USAGE_ERROR,
            )
        request.filter = filter_text  # type: ignore[attr-defined,unused-ignore]
    return request


def _sink(format_name: str, writer: HashingWriter) -> Sink:
    return parquet.ParquetSink(writer) if format_name == "parquet" else JsonLinesSink(writer)


def _export(connection: Connection, request: users_pb2.ListUsersChunkedRequest, sink: Sink) -> int:
    count = 0
    with progress.bar("exporting") as bar:
        for users in chunks(connection, request):
            sink.write(users)
            count += len(users)
            bar.update(len(users))
        sink.close()
    return count


def chunks(connection: Connection, request: users_pb2.ListUsersChunkedRequest) -> Iterator[Any]:
    """The users of every ListUsersChunked message, resuming a broken stream from its last cursor."""
    policy = ResumePolicy()
    stub = connection.users
    failures = 0
    while True:
        stream = stub.ListUsersChunked(request, metadata=connection.metadata)
        received = False
        try:
            for message in stream:
                failures, received = 0, True
                yield message.users
                if message.next_cursor == 0:
                    return
                request.cursor = message.next_cursor
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
