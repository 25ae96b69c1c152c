"""The life of one server process: its database, serving, signals and a two-stage exit.

The first SIGTERM, Ctrl-C (SIGINT) or SIGHUP (the terminal that ran the server
closed) turns health NOT_SERVING, refuses new calls and gives in-flight ones the
grace period, after which the calls still running (streams, health watches) are
cancelled; a second signal stops at once. Whatever happens, the database
threads, the health probe, the metrics endpoint and the span exporter are shut
down within a bounded time, so the process exits soon after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from playhouse.pool import PooledDatabase

from memstore_server import __version__, metrics, tracing
from memstore_server.app import create_server
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres

try:  # not built for every platform (Windows): asyncio's own loop serves there
    import uvloop
except ImportError:  # pragma: no cover - installed wherever memstore is tested
    uvloop = None  # type: ignore[assignment]

logger = logging.getLogger("memstore_server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What shutting down may take after the grace period, in all: calls cancelled at the end of
# the grace period get half a second to finish, and every later step shares what is left,
# so the process is gone well within 2 s of the grace period's end even on a loaded machine.
_AFTER_GRACE_SECONDS = 1.0
_CANCELLED_CALLS_SECONDS = 0.5


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[tuple[PooledDatabase, str]]:
    """The pooled database of ``settings`` and its URL, starting the embedded one when no URL is given."""
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
        logger.info("embedded PostgreSQL running under %s", settings.data_dir)
    db = open_database(
        url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        prepared_statements=settings.prepared_statements,
    )
    try:
        yield db, url
    finally:
        db.close_all()
        if embedded is not None:
            embedded.stop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The kind of event loop servers run on: uvloop's where it is installed.

    Most of a call's cost in this server is the event loop's own machinery
    (tasks, futures, callbacks, the wake-ups from database threads), which
    uvloop runs in C: measured with h2load on GetUser, about 15% less CPU per
    call than asyncio's loop. Tests serve on the same kind of loop."""
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(settings: Settings, db: PooledDatabase, *, serve_metrics: bool = True) -> None:
    """Serve until a signal asks to stop, then drain and return (see serve), on the loop of
    new_event_loop."""
    serving = serve(settings, db, serve_metrics=serve_metrics)
    if uvloop is not None:
        uvloop.run(serving)
    else:
        asyncio.run(serving)


async def serve(settings: Settings, db: PooledDatabase, *, serve_metrics: bool = True) -> None:
    """Serve until a signal asks to stop, then drain in-flight RPCs and return.

    ``serve_metrics`` is False in a worker process: the supervisor serves the metrics of all.
    """
    tracer_provider = tracing.otlp_tracer_provider() if tracing.wanted(os.environ) else None
    handle = create_server(settings, db, tracer_provider=tracer_provider)
    metrics_server = None
    if settings.metrics_listen is not None and serve_metrics:
        metrics_server = metrics.serve_metrics(settings.metrics_listen)
    await handle.server.start()
    await handle.database_health.start()
    handle.feed.start()
    if tracer_provider is not None:
        logger.info("tracing: exporting spans over OTLP")
    host = settings.listen.rpartition(":")[0]
    logger.info("memstore %s serving on %s:%d", __version__, host, handle.port)

    loop = asyncio.get_running_loop()
    first_signal = asyncio.Event()
    second_signal = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if first_signal.is_set():
            logger.warning("second %s: stopping now", signum.name)
            second_signal.set()
            return
        logger.info("%s: refusing new calls, giving in-flight ones %gs", signum.name, settings.grace_period)
        first_signal.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await first_signal.wait()
        signalled = loop.time()
        await handle.health.enter_graceful_shutdown()  # NOT_SERVING from now on, whatever the database says
        draining = asyncio.ensure_future(handle.server.stop(settings.grace_period))
        interrupted = asyncio.ensure_future(second_signal.wait())
        await asyncio.wait(
            (draining, interrupted),
            timeout=settings.grace_period + _CANCELLED_CALLS_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
        interrupted.cancel()
        if not draining.done():
            await handle.server.stop(0)  # cancels every call still running
            draining.cancel()
    finally:
        if not first_signal.is_set():  # serving ended without a signal (an error): stop at once
            signalled = loop.time() - settings.grace_period
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await handle.database_health.stop()
        await handle.feed.stop()
        handle.blocking.shutdown()
        if metrics_server is not None:
            metrics_server.shutdown()
        if tracer_provider is not None:
            deadline = signalled + settings.grace_period + _AFTER_GRACE_SECONDS
            _bounded(tracer_provider.shutdown, "flushing spans", max(0.1, deadline - loop.time()))
    logger.info("stopped %.1fs after the signal", loop.time() - signalled)


def _bounded(step: object, what: str, seconds: float) -> None:
    """Run ``step()`` on a daemon thread, waiting at most ``seconds``: an exporter whose
    endpoint is gone retries for longer than a shutdown may take."""
    assert callable(step)
    thread = threading.Thread(target=step, name=what, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        logger.warning("gave up %s after %gs", what, seconds)
