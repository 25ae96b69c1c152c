"""Logging set-up: plain text for people, JSON lines for log pipelines.

Every record gets the request id and trace id of the RPC being served, so one
grep (or one query) finds everything about a call. Nothing here ever logs
request metadata, so bearer tokens cannot reach the log.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from memstore_server import request_context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# Fields of a JSON line; the access log adds method, code, duration_ms and peer.
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message", "request_id", "trace_id")


class _RequestFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_context.current()
        if not hasattr(record, "trace_id"):
            record.trace_id = request_context.trace_id()
        return True


def configure(level: str, log_format: str) -> None:
    """Send every log record to stderr in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestFields())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                list(JSON_FIELDS),
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
