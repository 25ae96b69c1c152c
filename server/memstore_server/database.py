"""The connection pool, and the one place where a database failure becomes UNAVAILABLE.

Peewee's pool (``playhouse.pool``) hands each database thread (blocking.py) its
own connection for the length of a ``connection()`` block; the block returns it to the pool afterwards.
A connection that saw the database fail (an outage, a server shutting down, a server
turned read-only by a failover) is closed instead of being reused, and the call is
UNAVAILABLE: retryable, and never retried here, so a write is never sent twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import peewee
import psycopg2.extensions
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

from memstore_server import metrics
from memstore_server.errors import Unavailable

logger = logging.getLogger(__name__)

# Fail fast when the server is unreachable instead of hanging until the RPC deadline.
CONNECT_TIMEOUT_SECONDS = 5
# A pooled connection idle for longer than this is checked with a round trip before reuse.
PING_AFTER_IDLE_SECONDS = 5.0
# SQLSTATE of a write refused by a server that cannot write: a standby, or a primary being
# demoted (default_transaction_read_only turned on). psycopg2 raises it as an InternalError.
READ_ONLY_SQL_TRANSACTION = "25006"


def _connect_params(url: str) -> tuple[str, dict[str, Any]]:
    params = psycopg2.extensions.parse_dsn(url)
    dbname = params.pop("dbname", None) or params.get("user") or "postgres"
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_SECONDS))
    params.setdefault("application_name", "memstore")
    return dbname, {**params, "connection_factory": Connection}


class Connection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers the statements prepared on it (store/prepared.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


class Pool(PooledPostgresqlDatabase):  # type: ignore[misc]
    """Peewee's pool, pinging a connection before reuse only when it has been idle a while.

    Peewee checks every connection it hands out with a round trip (``SELECT 1``),
    which doubles the queries of a point read. A connection returned moments ago
    was working moments ago; one idle for longer may have been dropped by the
    server or a middlebox, so it is still checked. Outages are handled apart:
    the health probe closes every idle connection when the database goes away.
    """

    def __init__(
        self, *args: Any, prepared_statements: bool = True, role: str = "primary", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._returned_at: dict[int, float] = {}
        self.role = role  # "primary" or "replica": the label of its metrics
        # False behind a pooler that moves sessions between server connections (store/prepared.py).
        self.prepared_statements = prepared_statements

    def _is_closed(self, conn: Any) -> bool:
        if conn.closed:
            return True
        returned_at = self._returned_at.get(self.conn_key(conn))
        if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
            return False
        closed: bool = super()._is_closed(conn)
        return closed

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        self._returned_at[self.conn_key(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _can_reuse(self, conn: Any) -> bool:
        reusable: bool = not conn.closed and super()._can_reuse(conn)
        return reusable

    def _close_raw(self, conn: Any) -> None:
        self._returned_at.pop(self.conn_key(conn), None)
        super()._close_raw(conn)


def open_database(
    url: str, *, pool_size: int, pool_timeout: float, prepared_statements: bool = True, role: str = "primary"
) -> Pool:
    """A pooled database for ``url`` (any libpq URL or key=value string, several hosts
    included: libpq picks the one that fits ``target_session_attrs``); connects lazily."""
    dbname, params = _connect_params(url)
    return Pool(
        dbname,
        max_connections=pool_size,
        timeout=pool_timeout,
        stale_timeout=300,
        prepared_statements=prepared_statements,
        role=role,
        **params,
    )


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL gave for ``error`` (a peewee or driver error), when it gave one."""
    original = getattr(error, "orig", None) or (error.args[0] if error.args else None)
    code = getattr(original, "pgcode", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def is_read_only(error: BaseException) -> bool:
    """Whether ``error`` is a write refused because the server has become read-only."""
    return isinstance(error, peewee.InternalError) and sqlstate(error) == READ_ONLY_SQL_TRANSACTION


@contextmanager
def connection(db: peewee.Database) -> Iterator[peewee.Database]:
    """Hold one pooled connection for the block; database outages surface as Unavailable."""
    try:
        with db.connection_context():
            metrics.observe_pool(db)
            try:
                yield db
            except (peewee.OperationalError, peewee.InterfaceError):
                _discard(db)
                raise
            except peewee.InternalError as error:
                if not is_read_only(error):
                    raise
                _discard(db)
                logger.warning("database refused a write, being read-only: %s", " ".join(str(error).split()))
                raise Unavailable(
                    "the database is read-only (a failover may be under way); retry with backoff",
                    reason="DATABASE_READ_ONLY",
                ) from error
    except MaxConnectionsExceeded as error:
        logger.warning("database pool exhausted: %s", error)
        raise Unavailable(
            "the server is busy: no database connection became free in time; retry with backoff",
            reason="DATABASE_POOL_EXHAUSTED",
        ) from error
    except (peewee.OperationalError, peewee.InterfaceError) as error:
        logger.warning("database unavailable: %s", error)
        raise Unavailable(
            "the database is unavailable; retry with backoff", reason="DATABASE_UNAVAILABLE"
        ) from error
    finally:
        metrics.observe_pool(db)  # the connection is back in the pool by now


def _discard(db: peewee.Database) -> None:
    """Close the current connection for good: one that saw the server fail or turn
    read-only is never handed out again (the pool drops closed connections when they
    come back), so the next one goes through libpq's choice of host afresh (a
    multi-host URL then finds the new primary)."""
    if not db.is_closed():
        db.connection().close()


def own_connection(db: peewee.Database) -> Any:
    """A new connection to ``db``'s database outside its pool, for what holds one long:
    the change feed's LISTEN, a snapshot's listing. The caller closes it."""
    try:
        return psycopg2.connect(database=db.database, **db.connect_params)
    except psycopg2.OperationalError as error:
        logger.warning("database unavailable: %s", " ".join(str(error).split()))
        raise Unavailable(
            "the database is unavailable; retry with backoff", reason="DATABASE_UNAVAILABLE"
        ) from error
