"""Logging set-up: plain text for people, JSON lines for log pipelines, written off the serving loop.

Every record gets the request id and trace id of the RPC being served, so one
grep (or one query) finds everything about a call. Records go through a queue:
the serving loop only builds a record and enqueues it, and a listener thread
formats and writes it, so a slow stderr (a pipe, a terminal) never slows calls.
Nothing here ever logs request metadata, so bearer tokens cannot reach the log.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from memstore_server import request_context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# Fields of a JSON line; the access log adds method, code, duration_ms and peer.
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message", "request_id", "trace_id")

_listener: logging.handlers.QueueListener | None = None


class _RequestFields(logging.Filter):
    """Stamps the record with the ids of the RPC being served, in the thread that logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_context.current()
        if not hasattr(record, "trace_id"):
            record.trace_id = request_context.trace_id()
        return True


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the listener as they are: formatting happens there, not in the caller."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``log_format`` ("text" or "json"), through a queue."""
    global _listener  # noqa: PLW0603 - one listener per process
    shutdown()
    output = logging.StreamHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        output.setFormatter(
            JsonFormatter(
                list(JSON_FIELDS),
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        output.setFormatter(logging.Formatter(TEXT_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = _Enqueue(records)
    enqueue.addFilter(_RequestFields())
    _listener = logging.handlers.QueueListener(records, output)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [enqueue]
    root.setLevel(level)


def shutdown() -> None:
    """Write out the records still queued and stop the listener."""
    global _listener  # noqa: PLW0603
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(shutdown)
