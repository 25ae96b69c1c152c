"""Primary failover: a multi-host URL followed to the promoted replica, and read-only servers.

Real servers (tests/postgres_cluster.py): the primary is stopped as if it crashed
and its synchronous replica promoted, or the primary is turned read-only as a
demotion does, under a serving memstore that is never restarted.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.migrations import migrate

from tests.postgres_cluster import Node, caught_up, primary, scratch, streaming_pair, wait_for
from tests.reliability import record
from tests.support import TIMEOUT, RunningServer, details_of, expect_error, unique

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What the issue promises: calls and health recover within this long after a promotion.
RECOVERY_SECONDS = 5.0


def multi_host_url(*nodes: Node) -> str:
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    return f"postgresql://postgres@{hosts}/memstore?target_session_attrs=read-write&connect_timeout=2"


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.users = users_pb2_grpc.UserServiceStub(channel)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def status(self) -> int:
        try:
            response = self.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        except grpc.RpcError:
            return -1
        return int(response.status)


@contextlib.contextmanager
def serving(db: peewee.Database, **settings: Any) -> Iterator[Stubs]:
    """A memstore on ``db`` with the default health interval unless told, and stubs to call it."""
    running = RunningServer(Settings(listen="127.0.0.1:0", **settings), db)
    try:
        with grpc.insecure_channel(running.target) as channel:
            yield Stubs(channel)
    finally:
        running.stop()


class Writer:
    """CreateUser calls one after another on a thread, as a client would make them."""

    def __init__(self, users: users_pb2_grpc.UserServiceStub) -> None:
        self._users = users
        self.acknowledged: list[tuple[float, str]] = []
        self.failures: list[tuple[float, grpc.StatusCode, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            user_id = unique("acked")
            try:
                self._users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=3)
            except grpc.RpcError as error:
                details = details_of(error)
                self.failures.append((time.monotonic(), details.code, details.reason))
                time.sleep(0.05)  # a client's backoff
            else:
                self.acknowledged.append((time.monotonic(), user_id))

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def acknowledged_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first write acknowledged after it."""
        later = [at for at, _ in self.acknowledged if at > moment]
        return later[0] - moment if later else None


def present(node: Node, user_ids: list[str]) -> set[str]:
    return {row[0] for row in node.sql("SELECT user_id FROM users WHERE user_id = ANY(%s)", (user_ids,))}


def test_promotion_of_the_synchronous_replica_is_survived_with_no_acknowledged_write_lost() -> None:
    with scratch() as folder, streaming_pair(folder, synchronous=True) as (old_primary, standby):
        db = open_database(multi_host_url(old_primary, standby), pool_size=4, pool_timeout=2)
        migrate(db)
        try:
            with serving(db) as stubs, Writer(stubs.users) as writer:
                assert wait_for(lambda: len(writer.acknowledged) >= 20, 20, "writes acknowledged")
                assert stubs.status() == SERVING
                old_primary.stop("immediate")  # as if it crashed
                stopped = time.monotonic()
                noticed = wait_for(lambda: stubs.status() == NOT_SERVING, 10, "health NOT_SERVING")
                time.sleep(1.0)  # no primary for a while: calls fail meanwhile
                failed_meanwhile = [code for at, code, _ in writer.failures if at > stopped]
                standby.promote()
                promoted = time.monotonic()
                healthy = wait_for(lambda: stubs.status() == SERVING, 10, "health SERVING again")
                assert wait_for(lambda: writer.acknowledged_after(promoted) is not None, 10, "a write again")
                wrote = writer.acknowledged_after(promoted)
                assert wait_for(lambda: len(writer.acknowledged) >= 40, 20, "more writes")
            assert wrote is not None
            assert healthy <= RECOVERY_SECONDS, f"health took {healthy:.2f}s after the promotion"
            assert wrote <= RECOVERY_SECONDS, f"writes took {wrote:.2f}s after the promotion"
            assert failed_meanwhile, "no call failed while there was no primary"
            codes = {code for _, code, _ in writer.failures}
            assert codes == {grpc.StatusCode.UNAVAILABLE}, codes
            acknowledged = [user_id for _, user_id in writer.acknowledged]
            lost = set(acknowledged) - present(standby, acknowledged)
            assert not lost, f"{len(lost)} acknowledged writes lost: {sorted(lost)[:5]}"
        finally:
            db.close_all()
    record(
        "primary failover",
        "the primary stopped (immediate) under a writing memstore with a multi-host URL; "
        "its synchronous replica promoted 1 s later",
        len(acknowledged),
        f"NOT_SERVING after {noticed:.2f}s; {len(writer.failures)} calls UNAVAILABLE meanwhile, none "
        f"of another code; SERVING {healthy:.2f}s and writes {wrote:.2f}s after the promotion; "
        f"{len(acknowledged)} acknowledged writes, 0 lost",
    )


def test_a_demoted_primary_is_left_for_the_promoted_one() -> None:
    with scratch() as folder, streaming_pair(folder) as (old_primary, standby):
        db = open_database(multi_host_url(old_primary, standby), pool_size=4, pool_timeout=2)
        migrate(db)
        caught_up(old_primary, standby)
        try:
            with serving(db) as stubs, Writer(stubs.users) as writer:
                assert wait_for(lambda: len(writer.acknowledged) >= 10, 20, "writes acknowledged")
                old_primary.set_read_only(True)  # the demotion: new transactions are read-only
                demoted = time.monotonic()
                assert wait_for(
                    lambda: any(at > demoted for at, _, _ in writer.failures), 10, "a write refused"
                )
                standby.promote()
                promoted = time.monotonic()
                healthy = wait_for(lambda: stubs.status() == SERVING, 10, "health SERVING on the new primary")
                assert wait_for(lambda: writer.acknowledged_after(promoted) is not None, 10, "a write again")
                wrote = writer.acknowledged_after(promoted)
            assert wrote is not None
            assert wrote <= RECOVERY_SECONDS
            assert healthy <= RECOVERY_SECONDS
            reasons = {(code, reason) for _, code, reason in writer.failures}
            assert reasons <= {
                (grpc.StatusCode.UNAVAILABLE, "DATABASE_READ_ONLY"),
                (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
            }, reasons
            assert (grpc.StatusCode.UNAVAILABLE, "DATABASE_READ_ONLY") in reasons
            after = [user_id for at, user_id in writer.acknowledged if at > promoted]
            assert present(standby, after) == set(after)
            assert not present(old_primary, after), "a write after the failover went to the old primary"
        finally:
            db.close_all()


@pytest.fixture
def lone_primary() -> Iterator[Node]:
    with scratch() as folder:
        node = primary(folder)
        try:
            yield node
        finally:
            node.stop("immediate")


def test_writes_to_a_read_only_server_are_unavailable_and_drop_their_connection(lone_primary: Node) -> None:
    db = open_database(lone_primary.url(), pool_size=1, pool_timeout=2)
    migrate(db)
    owner, victim = unique("owner"), unique("never")
    try:
        with serving(db, health_interval=0.2) as stubs:
            stubs.users.CreateUser(users_pb2.CreateUserRequest(user_id=owner), timeout=TIMEOUT)
            stubs.sessions.CreateSession(
                sessions_pb2.CreateSessionRequest(session_id=f"{owner}-s", user_id=owner), timeout=TIMEOUT
            )
            (_, _, pooled) = db._connections[0]  # the pool's one connection, idle now
            lone_primary.set_read_only(True)

            refused = expect_error(
                stubs.users.CreateUser,
                users_pb2.CreateUserRequest(user_id=victim),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert refused.reason == "DATABASE_READ_ONLY"
            assert "read-only" in refused.message
            assert "retry" in refused.message
            assert pooled.closed, "the connection that met the read-only server went back to the pool"
            assert not db._connections
            assert not db._in_use
            # The server logs each refused statement: one, so it was never sent again. CreateUser's
            # first statement takes the new id (nextval), which a read-only server refuses already.
            refusals = len(
                re.findall(
                    r"cannot execute (INSERT|nextval\(\)) in a read-only transaction",
                    lone_primary.log.read_text(),
                )
            )
            assert refusals == 1, "the refused write was sent again"

            # Every other write says the same; reads still work on a new connection.
            writes = [
                (stubs.users.UpdateUser, users_pb2.UpdateUserRequest(user_id=owner, email="x@y.co")),
                (stubs.users.DeleteUser, users_pb2.DeleteUserRequest(user_id=owner)),
                (
                    stubs.users.BatchCreateUsers,
                    users_pb2.BatchCreateUsersRequest(
                        requests=[users_pb2.CreateUserRequest(user_id=unique("batch")) for _ in range(3)]
                    ),
                ),
                (stubs.sessions.CreateSession, sessions_pb2.CreateSessionRequest(session_id=unique("s"))),
                (
                    stubs.sessions.UpdateSession,
                    sessions_pb2.UpdateSessionRequest(session_id=f"{owner}-s", metadata=None),
                ),
                (stubs.sessions.DeleteSession, sessions_pb2.DeleteSessionRequest(session_id=f"{owner}-s")),
            ]
            for call, request in writes:
                assert expect_error(call, request, grpc.StatusCode.UNAVAILABLE).reason == "DATABASE_READ_ONLY"
            got = stubs.users.GetUser(users_pb2.GetUserRequest(user_id=owner), timeout=TIMEOUT)
            assert got.user.email == ""
            assert wait_for(lambda: stubs.status() == NOT_SERVING, 5, "health NOT_SERVING while read-only")

            lone_primary.set_read_only(False)
            assert wait_for(lambda: stubs.status() == SERVING, 5, "health SERVING again")
            stubs.users.UpdateUser(
                users_pb2.UpdateUserRequest(user_id=owner, email="x@y.co"), timeout=TIMEOUT
            )
            with pytest.raises(grpc.RpcError) as missing:
                stubs.users.GetUser(users_pb2.GetUserRequest(user_id=victim), timeout=TIMEOUT)
            assert details_of(missing.value).code == grpc.StatusCode.NOT_FOUND, (
                "the refused write was retried"
            )
    finally:
        db.close_all()


def test_a_server_shutting_down_is_unavailable_and_its_connection_is_dropped(lone_primary: Node) -> None:
    """57P01 (terminating connection due to administrator command), as a switchover sends."""
    db = open_database(lone_primary.url(), pool_size=1, pool_timeout=2)
    migrate(db)
    try:
        with serving(db, health_interval=0.2) as stubs:
            user_id = unique("kept")
            stubs.users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
            (_, _, pooled) = db._connections[0]
            lone_primary.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s",
                (pooled.info.backend_pid,),
            )
            failed = expect_error(
                stubs.users.UpdateUser,
                users_pb2.UpdateUserRequest(user_id=user_id, first_name="A"),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert failed.reason == "DATABASE_UNAVAILABLE"
            assert pooled.closed
            updated = stubs.users.UpdateUser(
                users_pb2.UpdateUserRequest(user_id=user_id, first_name="B"), timeout=TIMEOUT
            )
            assert updated.user.first_name == "B"
    finally:
        db.close_all()
