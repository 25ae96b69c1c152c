"""Time limits on awaits that never swallow a cancellation: ``timeout``, not ``asyncio.wait_for``.

On Python 3.10 and 3.11, ``asyncio.wait_for`` loses a cancellation that arrives in
the same turn of the loop as its awaitable finishing: it returns the result, and
the task carries on as if nobody had asked it to stop. Here that left a stream
handler waiting for the change feed after its client had gone, and the feed's
reader looping after ``ChangeFeed.stop`` had cancelled it, so shutting down hung
(seen about once in a few hundred stops). ``asyncio.timeout`` (3.11) and
async-timeout (its backport) count cancellations and re-raise the caller's.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - the suite runs on 3.11
    from async_timeout import timeout

__all__ = ["timeout"]
