"""The health service's view of the database: SERVING only while a writable PostgreSQL answers.

A probe on its own connection (outside the pool, so a busy pool never reads as
an outage) runs every few seconds, on a thread of its own, so neither busy
database threads nor a hung connection attempt delay the serving loop. When the
database stops answering, or answers read-only (a standby, or a primary being
demoted in a failover), every service turns NOT_SERVING and the pool's idle
connections are closed, as is the probe's own; when a writable server answers
again (with a multi-host URL, libpq finds whichever host is the primary now),
SERVING returns and fresh connections are made on demand. No restart is needed.

The read replica (replica.py), when there is one, is probed beside it, but never
changes the health: bulk reads go to the primary while the replica is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import peewee
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from playhouse.pool import PooledDatabase

from memstore_server.replica import Replica

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    def __init__(
        self,
        pool: PooledDatabase,
        servicer: HealthServicer,
        service_names: Iterable[str],
        interval: float,
        replica: Replica | None = None,
    ) -> None:
        self._pool = pool
        self.replica = replica
        # The same server and credentials as the pool, on a connection of its own.
        self._probe = peewee.PostgresqlDatabase(pool.database, **pool.connect_params)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-health")
        self._servicer = servicer
        self._service_names = ("", *service_names)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None

    async def check(self) -> bool:
        """Probe once and publish the result; True when the database answered."""
        healthy = await asyncio.get_running_loop().run_in_executor(self._thread, self._probe_once)
        if healthy != self.serving:
            if healthy and self.serving is False:
                logger.info("database answers again; serving")
            self.serving = healthy
            for name in self._service_names:
                await self._servicer.set(name, SERVING if healthy else NOT_SERVING)
        return healthy

    def _probe_once(self) -> bool:
        try:
            if self._probe.is_closed():
                self._probe.connect()
            # What libpq asks for target_session_attrs=read-write: a new transaction's mode.
            writable = self._probe.execute_sql("SHOW transaction_read_only").fetchone()[0] == "off"
        except peewee.DatabaseError as error:
            if not self._probe.is_closed():
                self._probe.close()
            if self.serving is not False:
                logger.warning("database stopped answering: %s", " ".join(str(error).split()))
            healthy = False
        else:
            healthy = writable
            if not writable:
                self._probe.close()  # the next probe connects afresh, to whichever host is writable then
                if self.serving is not False:
                    logger.warning("database answers read-only (a standby, or a primary being demoted)")
        if healthy != self.serving:
            # Idle pooled connections from before a change of state are broken or about to be.
            self._pool.close_idle()
        return healthy

    async def start(self) -> None:
        """Probe now, then every interval until stopped (the replica's probe too)."""
        await self.check()
        self._task = asyncio.ensure_future(self._run())
        if self.replica is not None:
            await self.replica.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.replica is not None:
            await self.replica.stop()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_probe)
        self._thread.shutdown(wait=False)

    def _close_probe(self) -> None:
        if not self._probe.is_closed():
            self._probe.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()
