"""Bulk reads on a streaming replica while it keeps up; on the primary when it does not.

With ``--read-database-url``, the reads that scan (listings, streams) run on a
replica, so the primary's CPU goes to writes and point reads. Stores take a
:class:`Reads` and run every bulk read through it: that is the one place where
a read's database is chosen. Point reads and writes never pass through it, so a
caller always reads its own writes where it reads one user.

A probe on a connection and a thread of its own (as health.py's for the
primary) asks the replica every ``--health-interval`` how far behind it is. Lag
is 0 when the replica has replayed all the WAL it has received, else the age of
the last transaction it replayed, so an idle primary never looks like lag. A
replica that does not answer, lags more than ``--max-replica-lag`` or lacks this
memstore's schema is skipped: bulk reads go to the primary until a probe finds
it well again. A bulk read that fails on the replica is run again on the primary
at once (a read, so running it twice is harmless) and the replica is skipped
until the next probe. Each change of state is logged once and published as
``memstore_db_replica_available`` and ``memstore_db_replica_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import peewee
from playhouse.pool import PooledDatabase

from memstore_server import metrics
from memstore_server.errors import Unavailable
from memstore_server.migrations import LATEST_VERSION

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Lag in seconds, as defined above; NULL when the replica has WAL waiting but has replayed no
# transaction since it started, so how old its data is cannot be told.
_LAG = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
    ELSE greatest(0, extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()))::float8
END
"""
_HAS_SCHEMA = "SELECT to_regclass('schema_migrations') IS NOT NULL"
_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migrations"


class State(enum.Enum):
    UNKNOWN = "not probed yet"
    AVAILABLE = "available"
    LAGGING = "too far behind"
    UNREACHABLE = "unreachable"
    UNUSABLE = "unusable"


class Replica:
    """A streaming replica's pool, and whether bulk reads may use it now."""

    def __init__(self, pool: PooledDatabase, *, max_lag: float, interval: float) -> None:
        self.pool = pool
        self._max_lag = max_lag
        self._interval = interval
        # The same server and credentials as the pool, on a connection of its own.
        self._probe = peewee.PostgresqlDatabase(pool.database, **pool.connect_params)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-replica")
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.state = State.UNKNOWN
        self.lag: float | None = None

    @property
    def usable(self) -> bool:
        return self.state is State.AVAILABLE

    async def check(self) -> State:
        """Probe once and publish the result."""
        state, lag, detail = await asyncio.get_running_loop().run_in_executor(self._thread, self._probe_once)
        self._publish(state, lag, detail)
        return state

    def failed(self, error: BaseException) -> None:
        """A read failed on the replica: skip it until a probe finds it well."""
        self._publish(State.UNREACHABLE, None, f"a read failed on it: {_one_line(error)}")

    def _probe_once(self) -> tuple[State, float | None, str]:
        try:
            if self._probe.is_closed():
                self._probe.connect()
            version = 0
            if self._probe.execute_sql(_HAS_SCHEMA).fetchone()[0]:
                version = self._probe.execute_sql(_SCHEMA_VERSION).fetchone()[0]
            lag = self._probe.execute_sql(_LAG).fetchone()[0]
        except peewee.DatabaseError as error:
            if not self._probe.is_closed():
                self._probe.close()
            return State.UNREACHABLE, None, _one_line(error)
        if version < LATEST_VERSION:
            return (
                State.UNUSABLE,
                None,
                f"it has schema version {version}, this memstore needs {LATEST_VERSION} "
                "(is --read-database-url a replica of --database-url?)",
            )
        if lag is None:
            return State.LAGGING, None, "it has WAL to replay and has replayed nothing since it started"
        if lag > self._max_lag:
            return State.LAGGING, lag, f"{lag:.1f}s behind, more than --max-replica-lag {self._max_lag:g}s"
        return State.AVAILABLE, lag, f"{lag:.1f}s behind"

    def _publish(self, state: State, lag: float | None, detail: str) -> None:
        with self._lock:
            changed = state is not self.state
            self.state, self.lag = state, lag
            metrics.REPLICA_AVAILABLE.set(1 if state is State.AVAILABLE else 0)
            metrics.REPLICA_LAG_SECONDS.set(math.nan if lag is None else lag)
        if not changed:
            return
        if state is State.AVAILABLE:
            logger.info("read replica available (%s): bulk reads go to it", detail)
            return
        logger.warning(
            "read replica %s (%s): bulk reads go to the primary until it is back", state.value, detail
        )
        if state is State.UNREACHABLE:
            self.pool.close_idle()  # broken by the outage, or about to be

    async def start(self) -> None:
        """Probe now, then every interval until stopped."""
        await self.check()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

    async def stop(self) -> None:
        """Stop probing and close the probe's and the pool's connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)
        metrics.REPLICA_AVAILABLE.set(0)  # nothing reads it any more

    def _close(self) -> None:
        if not self._probe.is_closed():
            self._probe.close()
        self.pool.close_all()


class Reads:
    """Where the stores run their bulk reads: on the replica while it is usable, else the primary."""

    def __init__(self, primary: peewee.Database, replica: Replica | None = None) -> None:
        self.primary = primary
        self.replica = replica

    def run(self, read: Callable[[peewee.Database], T]) -> T:
        """``read(db)`` on the database bulk reads go to now; on the primary again if the replica
        fails it (Unavailable from database.connection()), which is then skipped until probed well."""
        replica = self.replica
        if replica is None or not replica.usable:
            return read(self.primary)
        try:
            return read(replica.pool)
        except Unavailable as error:
            if error.reason != "DATABASE_UNAVAILABLE":  # a full pool is load, not an outage: no detour
                raise
            replica.failed(error.__cause__ or error)
        return read(self.primary)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
