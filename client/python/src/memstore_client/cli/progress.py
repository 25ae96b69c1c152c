"""Progress bars on stderr, drawn only when stderr is a terminal: never into a pipe or a log."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def shown() -> bool:
    return sys.stderr.isatty()


def bar(description: str, *, total: int | None = None, unit: str = "users") -> tqdm[Any]:
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not shown(),
        dynamic_ncols=True,
        leave=False,
    )
