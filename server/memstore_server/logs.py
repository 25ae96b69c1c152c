"""Logging set-up: plain text for people, JSON lines for log pipelines, written off the serving loop.

Every record gets the request id and trace id of the RPC being served, so one
grep (or one query) finds everything about a call. Records go through a queue:
the serving loop only builds a record and enqueues it, and a writer thread
formats and writes what has queued up every ``FLUSH_SECONDS``, in one write, so
a slow stderr (a pipe, a terminal) never slows calls, and the writer does not
wake (and take the interpreter lock) once per line: at INFO, a line per RPC,
that wake-up cost more than the line. Nothing here ever logs request metadata,
so bearer tokens cannot reach the log.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from memstore_server import request_context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# Fields of a JSON line; the access log adds method, code, duration_ms and peer.
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message", "request_id", "trace_id")

# How long a line may wait before it is written; records at WARNING and above are not held.
FLUSH_SECONDS = 0.05

_writer: _BatchWriter | None = None


class _RequestFields(logging.Filter):
    """Stamps the record with the ids of the RPC being served, in the thread that logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_context.current()
        if not hasattr(record, "trace_id"):
            record.trace_id = request_context.trace_id()
        return True


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer as they are: formatting happens there, not in the caller."""

    def __init__(self, writer: _BatchWriter) -> None:
        super().__init__(writer.records)
        self._writer = writer

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._writer:  # a deferred record, built by the writer
            self._writer.add(record)
            return
        self.queue.put_nowait(record)
        if record.levelno >= logging.WARNING:
            self._writer.wake.set()


@dataclass(frozen=True)
class _Deferred:
    """What the writer needs to build a record that the caller did not build."""

    logger: logging.Logger
    created: float
    message: str
    args: tuple[object, ...]
    extra: dict[str, object]


def info_later(
    logger: logging.Logger, message: str, args: tuple[object, ...], extra: dict[str, object]
) -> None:
    """Log at INFO, the record built and dispatched by the writer thread instead of the caller.

    For the access log, a line per RPC: building a LogRecord and passing it
    through filters costs the serving loop more than the call's own work, and
    here it costs a tuple. ``extra`` must carry request_id and trace_id, which
    the writer cannot see. The record keeps the moment of this call as its time.
    Without a writer (logging not configured by configure()), logs at once.
    """
    writer = _writer
    if writer is None:
        logger.info(message, *args, extra=extra)
        return
    writer.records.put_nowait(_Deferred(logger, time.time(), message, args, extra))


class _BatchWriter(threading.Thread):
    """Formats and writes the queued records in batches, one write and flush per batch."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.records: queue.SimpleQueue[logging.LogRecord | _Deferred] = queue.SimpleQueue()
        self.wake = threading.Event()
        self._stream = stream
        self._formatter = formatter
        self._stopping = False
        self._lines: list[str] = []

    def run(self) -> None:
        while not self._stopping:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            self._write_pending()
        self._write_pending()

    @staticmethod
    def _dispatch(deferred: _Deferred) -> None:
        """Build the deferred record and pass it to the logger's handlers (ours adds it to the batch)."""
        logger = deferred.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            0,
            deferred.message,
            deferred.args,
            None,
            extra=deferred.extra,
        )
        record.created = deferred.created
        record.msecs = (deferred.created * 1000) % 1000
        logger.handle(record)

    def stop(self) -> None:
        """Write every record queued so far, then end the thread."""
        self._stopping = True
        self.wake.set()
        self.join()

    def add(self, record: logging.LogRecord) -> None:
        """Format ``record`` into the batch being written (called on this thread only)."""
        try:
            self._lines.append(self._formatter.format(record))
        except Exception:  # a record that cannot be formatted must not stop the log
            self._lines.append(f"unformattable log record from {record.name}: {record.msg!r}")

    def _write_pending(self) -> None:
        while True:
            try:
                item = self.records.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Deferred):
                self._dispatch(item)
            else:
                self.add(item)
        lines, self._lines = self._lines, []
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed under us: nowhere left to write
                pass


def configure(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``log_format`` ("text" or "json"), through a queue."""
    global _writer  # noqa: PLW0603 - one writer per process
    shutdown()
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(
            list(JSON_FIELDS),
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    _writer = _BatchWriter(sys.stderr if stream is None else stream, formatter)
    _writer.start()
    enqueue = _Enqueue(_writer)
    enqueue.addFilter(_RequestFields())
    root = logging.getLogger()
    root.handlers[:] = [enqueue]
    root.setLevel(level)


def shutdown() -> None:
    """Write out the records still queued and stop the listener."""
    global _writer  # noqa: PLW0603
    if _writer is not None:
        _writer.stop()
        _writer = None


atexit.register(shutdown)
