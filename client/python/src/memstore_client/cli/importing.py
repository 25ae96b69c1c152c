"""``memstore import``: users from JSONL or Parquet, created through BatchCreateUsers in parallel.

Every record is shaped into a request before its batch is sent; the first record
that cannot be, or that the server refuses, stops the import, named by its line
(or row) number and field, with the count of users created before it. Batches
are atomic on the server, so a stopped import is continued by running it again
with ``--skip-existing``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import grpc
from memstore.v1 import users_pb2

from memstore_client._transport import ResumePolicy
from memstore_client.cli import parquet, progress
from memstore_client.cli.connection import Connection
from memstore_client.cli.exits import DATA_ERROR, SERVER_ERROR, USAGE_ERROR, CommandError
from memstore_client.cli.records import RecordError, create_request
from memstore_client.errors import MemstoreError, translate

FORMATS = ("auto", "jsonl", "parquet")
MAX_BATCH = 1000  # BatchCreateUsers' own limit
# A batch also stops at this many request bytes, well under the server's default 4 MiB
# message limit, so large metadata never makes a request (or its response) too big.
BATCH_BYTES = 1024 * 1024
BATCH_TIMEOUT = 120.0
# A field violation of BatchCreateUsers: requests[3].email
_VIOLATION = re.compile(r"^requests\[(\d+)\]\.?(.*)$")
# An empty line of a JSONL file: skipped.
BLANK = object()


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "import",
        help="create users from a JSONL or Parquet file (as export writes them)",
        description="Create the users of PATH ('-' for JSONL on stdin) through BatchCreateUsers, several "
        "batches at once. Each record gives user_id (required), email, first_name, last_name and "
        "metadata; uuid, id, timestamps and session_count (as export writes them) are assigned by the "
        "server and read past; any other field is an error. The first invalid line stops the import, "
        "with its number and field and the count of users created before it; batches are atomic, so "
        "running the import again with --skip-existing continues it.",
    )
    parser.add_argument("path", metavar="PATH", help="the file to import, or '-' for JSONL on stdin")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="file format (default: auto, from the name or content)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        metavar="N",
        help=f"users per BatchCreateUsers call, 1 to {MAX_BATCH} (default: %(default)s)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=4,
        metavar="N",
        help="batches in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave users whose user_id exists as they are (and retry a batch the server could not answer)",
    )
    return parser


@dataclass
class _Batch:
    """Requests on their way to the server, with the line of each."""

    lines: list[int] = field(default_factory=list)
    requests: list[users_pb2.CreateUserRequest] = field(default_factory=list)
    size: int = 0

    def add(self, line: int, request: users_pb2.CreateUserRequest, size: int) -> None:
        self.lines.append(line)
        self.requests.append(request)
        self.size += size


@dataclass
class _Tally:
    created: int = 0
    skipped: int = 0


def run(args: argparse.Namespace, connection: Connection) -> int:
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise CommandError(f"--batch-size must be 1 to {MAX_BATCH}", USAGE_ERROR)
    if args.parallel < 1:
        raise CommandError("--parallel must be at least 1", USAGE_ERROR)
    format_name = _format(args.path, args.format)
    unit = "row" if format_name == "parquet" else "line"
    started = time.monotonic()
    importer = _Importer(connection, args.batch_size, args.parallel, args.skip_existing, unit)
    with (
        _records(args.path, format_name) as (records, total, bar_unit),
        progress.bar("importing", total=total, unit=bar_unit) as bar,
    ):
        importer.run(records, bar)
    tally = importer.tally
    seconds = time.monotonic() - started
    skipped = f", {tally.skipped:,} skipped (they existed)" if args.skip_existing else ""
    print(
        f"memstore: imported {tally.created:,} users{skipped} in {seconds:.2f}s",
        file=sys.stderr,
    )
    return 0


class _Importer:
    def __init__(self, connection: Connection, batch_size: int, parallel: int, skip: bool, unit: str) -> None:
        self._call = connection.users.BatchCreateUsers
        self._metadata = connection.metadata
        self._batch_size = batch_size
        self._parallel = parallel
        self._skip = skip
        self._unit = unit
        self._in_flight: deque[tuple[_Batch, Future[Any]]] = deque()
        self.tally = _Tally()

    def run(self, records: Iterator[tuple[int, Any, int]], bar: Any) -> None:
        batch = _Batch()
        try:
            for line, record, progressed in records:
                if record is BLANK:
                    bar.update(progressed)
                    continue
                try:
                    request = record if isinstance(record, RecordError) else create_request(record)
                    if isinstance(request, RecordError):
                        raise request
                except RecordError as error:
                    # Every line before it is imported (or refused for itself), then the import stops.
                    if batch.requests:
                        self._send(batch)
                    self._drain()
                    raise self._stopped(line, error.field, error.description, self._created_note()) from None
                size = request.ByteSize()
                if batch.requests and (
                    len(batch.requests) >= self._batch_size or batch.size + size > BATCH_BYTES
                ):
                    self._send(batch)
                    batch = _Batch()
                batch.add(line, request, size)
                bar.update(progressed)
            if batch.requests:
                self._send(batch)
            self._drain()
        finally:
            for _, future in self._in_flight:
                future.cancel()

    def _send(self, batch: _Batch) -> None:
        while len(self._in_flight) >= self._parallel:
            self._settle(*self._in_flight.popleft())
        self._in_flight.append((batch, self._future(batch)))

    def _future(self, batch: _Batch) -> Future[Any]:
        request = users_pb2.BatchCreateUsersRequest(requests=batch.requests, skip_existing=self._skip)
        future: Future[Any] = self._call.future(request, timeout=BATCH_TIMEOUT, metadata=self._metadata)
        return future

    def _drain(self) -> None:
        """Wait for every batch in flight; the first to fail stops the import."""
        while self._in_flight:
            self._settle(*self._in_flight.popleft())

    def _settle(self, batch: _Batch, future: Future[Any]) -> None:
        """Count a batch's users, retrying it where that is safe; a refusal becomes the import's error."""
        policy, failures = ResumePolicy(), 0
        while True:
            try:
                response = future.result()
            except grpc.RpcError as error:
                failure = translate(error)
                if failure.reason == "BATCH_TOO_LARGE" and len(batch.requests) > 1:
                    self._split(batch)  # nothing was created: send it again in halves
                    return
                failures += 1
                delay = policy.delay(failure.code, failures) if self._skip else None
                if delay is None:
                    self._fail(batch, failure)
                time.sleep(delay or 0)
                future = self._future(batch)  # safe: existing users are skipped
                continue
            self.tally.created += len(response.users)
            self.tally.skipped += len(batch.requests) - len(response.users)
            return

    def _split(self, batch: _Batch) -> None:
        middle = len(batch.requests) // 2
        for part in (slice(0, middle), slice(middle, None)):
            half = _Batch(batch.lines[part], batch.requests[part])
            self._settle(half, self._future(half))

    def _fail(self, batch: _Batch, failure: MemstoreError) -> None:
        """Stop the import on a refused batch, named by the line the server's answer points at."""
        before = self._created_note()  # every batch before this one has been settled
        later = self._drain_quietly()
        if later:
            before += f" (and {later:,} from later {self._unit}s, whose batches were already sent)"
        index = _request_index(failure)
        if index is not None and index < len(batch.lines):
            field_name = _violated_field(failure)
            description = (
                failure.field_violations[0].description if failure.field_violations else failure.message
            )
            if failure.code == grpc.StatusCode.ALREADY_EXISTS:
                field_name, description = "user_id", _already_exists(failure)
            raise self._stopped(batch.lines[index], field_name, description, before, code=failure.code.name)
        raise CommandError(
            f"BatchCreateUsers ({self._unit}s {batch.lines[0]}-{batch.lines[-1]}): {failure.code.name}"
            + (f" [{failure.reason}]" if failure.reason else "")
            + f": {failure.message}; {before}"
            + ("" if self._skip else "; run again with --skip-existing to continue"),
            SERVER_ERROR,
        )

    def _drain_quietly(self) -> int:
        """Let the batches still in flight finish; the users they created (their errors are moot)."""
        created = 0
        while self._in_flight:
            batch, future = self._in_flight.popleft()
            try:
                response = future.result()
            except grpc.RpcError:
                continue
            created += len(response.users)
            self.tally.created += len(response.users)
            self.tally.skipped += len(batch.requests) - len(response.users)
        return created

    def _stopped(
        self, line: int, field_name: str, description: str, created: str, *, code: str = ""
    ) -> CommandError:
        where = f"{self._unit} {line}" + (f": {field_name}" if field_name else "")
        by_server = f" (the server answered {code})" if code else ""
        return CommandError(
            f"{where}: {description}{by_server}. Stopped: {created}; fix {self._unit} {line} and run "
            "again with --skip-existing to continue",
            DATA_ERROR,
        )

    def _created_note(self) -> str:
        created = f"{self.tally.created:,} users were created before it"
        return created + (f" ({self.tally.skipped:,} existed and were skipped)" if self.tally.skipped else "")


def _request_index(failure: MemstoreError) -> int | None:
    if "index" in failure.metadata and failure.metadata["index"].isdigit():
        return int(failure.metadata["index"])
    for violation in failure.field_violations:
        match = _VIOLATION.match(violation.field)
        if match:
            return int(match.group(1))
    return None


def _violated_field(failure: MemstoreError) -> str:
    for violation in failure.field_violations:
        match = _VIOLATION.match(violation.field)
        if match:
            return match.group(2)
    return ""


def _already_exists(failure: MemstoreError) -> str:
    user_id = failure.metadata.get("user_id", "")
    if "of this batch" in failure.message:
        return f"user_id {user_id!r} appears twice"
    return f"user {user_id!r} already exists (--skip-existing leaves existing users as they are)"


def _format(path: str, given: str) -> str:
    if given != "auto":
        return given
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    try:
        with open(path, "rb") as probe:
            head = probe.read(4)
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}", DATA_ERROR) from None
    return "parquet" if head == parquet.MAGIC else "jsonl"


class _records:  # noqa: N801 - used as a context manager, like open()
    """(line, record or RecordError, progress units) of the file, and its total for the progress bar."""

    def __init__(self, path: str, format_name: str) -> None:
        self._path = path
        self._format = format_name
        self._file: BinaryIO | None = None

    def __enter__(self) -> tuple[Iterator[tuple[int, Any, int]], int | None, str]:
        if self._format == "parquet":
            if self._path == "-":
                raise CommandError("Parquet cannot be read from stdin: give its path", USAGE_ERROR)
            parquet.pyarrow()
            path = Path(self._path)
            if not path.is_file():
                raise CommandError(f"cannot read {path}: no such file", DATA_ERROR)
            return (
                ((line, record, 1) for line, record in parquet.rows(path)),
                parquet.row_count(path),
                "users",
            )
        if self._path == "-":
            self._file = sys.stdin.buffer
            total = None
        else:
            try:
                self._file = open(self._path, "rb")
                total = Path(self._path).stat().st_size
            except OSError as error:
                raise CommandError(f"cannot read {self._path}: {error.strerror}", DATA_ERROR) from None
        return _json_lines(self._file), total, "B"

    def __exit__(self, *exc: object) -> None:
        if self._file is not None and self._file is not sys.stdin.buffer:
            self._file.close()


def _json_lines(source: BinaryIO) -> Iterator[tuple[int, Any, int]]:
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            yield number, BLANK, len(raw)
            continue
        try:
            record = json.loads(raw.decode("utf-8"))  # decoded here: json would guess the encoding
        except UnicodeDecodeError:
            record = RecordError("", "not UTF-8 text")
        except ValueError as error:
            record = RecordError("", f"not JSON: {error}")
        except RecursionError:
            record = RecordError("", "not JSON this reader can take: nested too deeply")
        yield number, record, len(raw)
