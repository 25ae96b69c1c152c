"""The health service's view of the database: SERVING only while PostgreSQL answers.

A probe on its own connection (outside the pool, so a busy pool never reads as
an outage) runs every few seconds. When the database stops answering, every
service turns NOT_SERVING and the pool's idle connections, broken by the
outage, are closed; when it answers again, SERVING returns and fresh
connections are made on demand. No restart is needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import peewee
from grpc_health.v1 import health, health_pb2
from playhouse.pool import PooledDatabase

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    def __init__(
        self,
        pool: PooledDatabase,
        servicer: health.HealthServicer,
        service_names: Iterable[str],
        interval: float,
    ) -> None:
        self._pool = pool
        # The same server and credentials as the pool, on a connection of its own.
        self._probe = peewee.PostgresqlDatabase(pool.database, **pool.connect_params)
        self._servicer = servicer
        self._service_names = ("", *service_names)
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.serving: bool | None = None

    def check(self) -> bool:
        """Probe once and publish the result; True when the database answered."""
        try:
            if self._probe.is_closed():
                self._probe.connect()
            self._probe.execute_sql("SELECT 1").fetchone()
            healthy = True
        except peewee.DatabaseError as error:
            if not self._probe.is_closed():
                self._probe.close()
            healthy = False
            if self.serving is not False:
                logger.warning("database stopped answering: %s", " ".join(str(error).split()))
        if healthy != self.serving:
            # Idle pooled connections from before a change of state are broken or about to be.
            self._pool.close_idle()
            if healthy and self.serving is False:
                logger.info("database answers again; serving")
            self.serving = healthy
            for name in self._service_names:
                self._servicer.set(name, SERVING if healthy else NOT_SERVING)
        return healthy

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)
        if not self._probe.is_closed():
            self._probe.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()
