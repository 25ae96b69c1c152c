"""Figures from the fault and fuzz tests, gathered into RELIABILITY.md by ``make reliability``.

Tests call ``record`` with what they tried, how many times, and what happened.
When MEMSTORE_RELIABILITY_REPORT names a file, the session writes the records
there as a Markdown table at the end of the run; otherwise they are dropped.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPORT_ENV = "MEMSTORE_RELIABILITY_REPORT"


@dataclass(frozen=True)
class Record:
    area: str
    tried: str
    times: int
    outcome: str


_records: list[Record] = []
_lock = threading.Lock()


def record(area: str, tried: str, times: int, outcome: str) -> None:
    with _lock:
        _records.append(Record(area, tried, times, outcome))


def write_report(command: str) -> Path | None:
    target = os.environ.get(REPORT_ENV)
    if not target or not _records:
        return None
    path = Path(target)
    lines = [
        "# memstore reliability figures",
        "",
        "Written by the fault, crash and fuzz tests of one real run; do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- when: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {sys.version.split()[0]}",
        "",
        "| area | what was tried | times | what happened |",
        "|---|---|---|---|",
    ]
    lines.extend(f"| {r.area} | {r.tried} | {r.times} | {r.outcome} |" for r in _records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
