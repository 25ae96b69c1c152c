"""JSONL made from stream messages in worker processes (``export --jobs N``), written in order.

Turning users into JSON costs a Python process several times what reading them
from the stream does. With ``--jobs N`` the main process hands each message's
bytes, unparsed, to N worker processes and writes their lines back in the order
read, a bounded number in flight, so memory stays constant. It pays only where
the command has cores to itself: beside the server and PostgreSQL on 2 cores,
starting and feeding the workers cost more than they saved, so one process is
the default.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from memstore.v1 import users_pb2

from memstore_client.cli.exits import DATA_ERROR, CommandError
from memstore_client.cli.records import Timestamps, json_line


def jsonl_block(data: bytes) -> tuple[bytes, int]:
    """The JSON lines (UTF-8, each ending in a newline) of one serialized ListUsersChunkedResponse."""
    message = users_pb2.ListUsersChunkedResponse.FromString(data)
    stamps = Timestamps()
    lines = [json_line(user, stamps) for user in message.users]
    if not lines:
        return b"", 0
    lines.append("")
    return "\n".join(lines).encode("utf-8"), len(lines) - 1


def _worker_signals() -> None:
    """Ctrl-C reaches the whole process group: only the main process answers it (and stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Converter:
    """Ordered conversion of stream messages to JSONL blocks: here when ``jobs`` is 1, else in
    ``jobs`` worker processes."""

    def __init__(self, jobs: int) -> None:
        self._jobs = jobs
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[Future[tuple[bytes, int]]] = deque()

    def convert(self, data: bytes) -> Iterator[tuple[bytes, int]]:
        """The blocks ready to write, in order, after taking ``data``."""
        if self._jobs <= 1:
            yield jsonl_block(data)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self._jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_signals
            )
        self._pending.append(self._pool.submit(jsonl_block, data))
        while len(self._pending) > 2 * self._jobs:
            yield _result(self._pending.popleft())

    def finish(self) -> Iterator[tuple[bytes, int]]:
        """Every block still being converted, in order."""
        while self._pending:
            yield _result(self._pending.popleft())

    def close(self) -> None:
        """Stop the workers (on success they are idle; on failure, work still queued is dropped)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _result(future: Future[tuple[bytes, int]]) -> tuple[bytes, int]:
    try:
        return future.result()
    except BrokenProcessPool:
        raise CommandError(
            "a worker process converting users died (killed?); run again, or with --jobs 1", DATA_ERROR
        ) from None
