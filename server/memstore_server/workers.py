"""Several server processes on one port: one Python process uses one core, whatever its threads.

``memstore-server serve --workers N`` runs this supervisor: it starts N worker
processes that each bind the same port (SO_REUSEPORT, so the kernel spreads
connections across them) with a pool of their own, forwards SIGTERM, Ctrl-C and SIGHUP to
them, and exits when they have drained. Metrics from every worker are summed
through prometheus-client's multiprocess mode and served by the supervisor.
A worker that dies on its own stops the others: the supervisor exits non-zero and
leaves restarting to whatever runs it (systemd, Kubernetes, compose).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from memstore_server import lifecycle, logs, metrics
from memstore_server.config import Settings
from memstore_server.database import open_database

logger = logging.getLogger(__name__)

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_main(settings: Settings, database_url: str) -> None:
    """One worker process: its own pool, the shared port, the single-process serve loop."""
    logs.configure(settings.log_level, settings.log_format)
    db = open_database(
        database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        prepared_statements=settings.prepared_statements,
    )
    try:
        lifecycle.run(settings, db, serve_metrics=False)
    finally:
        db.close_all()
        logs.shutdown()


def supervise(settings: Settings, database_url: str) -> int:
    """Run ``settings.workers`` workers until a signal stops them; 0 when all ended cleanly."""
    metrics_dir = None
    metrics_server = None
    if settings.metrics_listen is not None:
        metrics_dir = tempfile.mkdtemp(prefix="memstore-metrics-")
        os.environ[_MULTIPROC_ENV] = metrics_dir  # read by prometheus-client in each new worker
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = [
        context.Process(target=worker_main, args=(settings, database_url), name=f"memstore-worker-{number}")
        for number in range(settings.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        logger.info("%s: passing it to %d workers", signal.Signals(signum).name, len(workers))
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in lifecycle.STOP_SIGNALS}
    try:
        for worker in workers:
            worker.start()
        if metrics_dir is not None and settings.metrics_listen is not None:
            metrics_server = metrics.serve_metrics(settings.metrics_listen, metrics.registry_for_workers())
        logger.info("supervising %d workers on %s", len(workers), settings.listen)
        failed = _wait(workers, lambda: stopping)
        if failed and not stopping:
            logger.error("a worker exited unexpectedly; stopping the others")
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
            _wait(workers, lambda: True)
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_server is not None:
            metrics_server.shutdown()
        if metrics_dir is not None:
            os.environ.pop(_MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait(workers: list[BaseProcess], stopping: Callable[[], bool]) -> bool:
    """Wait until every worker has exited, or one fails while not stopping; True if any failed.

    Blocks on the workers' sentinels, so a worker's exit is seen the moment it happens.
    """
    running = {worker.sentinel: worker for worker in workers}
    failed = False
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            worker = running.pop(sentinel)  # type: ignore[arg-type]
            worker.join()
            if os.environ.get(_MULTIPROC_ENV) and worker.pid is not None:
                metrics.worker_exited(worker.pid)
            failed |= worker.exitcode != 0
        if failed and not stopping():
            return True
    return failed
