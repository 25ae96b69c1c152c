"""list_chunked and export_json_lines: order, gaps, users added while it runs, resuming broken streams."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import peewee
import pytest
from memstore_client import AsyncMemstoreClient, MemstoreClient, ResumePolicy
from memstore_server.config import Settings
from memstore_server.exporting import FIRST_WINDOW

from tests.support import RunningServer, bulk_users, delete_ids, free_port

pytestmark = pytest.mark.usefixtures("empty_store")


def test_list_chunked_over_a_table_with_gaps(client: MemstoreClient, db: peewee.Database) -> None:
    ids = bulk_users(db, 230)
    gone = ids[3:40] + ids[100:101] + ids[-1:]
    delete_ids(db, gone)
    chunks = list(client.user.list_chunked(chunk_size=25))
    assert [u.id for chunk in chunks for u in chunk] == [i for i in ids if i not in gone]
    assert all(len(chunk) == 25 for chunk in chunks[:-1])


def test_list_chunked_with_users_added_while_it_runs(client: MemstoreClient, db: peewee.Database) -> None:
    ids = bulk_users(db, 300, pad=4000)
    received: list[int] = []
    added: list[int] = []
    for number, chunk in enumerate(client.user.list_chunked(chunk_size=1)):
        received.extend(u.id for u in chunk)
        if number in (0, 50):
            added.extend(bulk_users(db, 3))
    assert len(received) == len(set(received))
    assert received[: len(ids)] == ids
    assert received[len(ids) :] == added  # added after the stream's position: they come, once


@pytest.fixture
def restartable(db: peewee.Database) -> Iterator[list[RunningServer]]:
    """Servers on one fixed port; the test stops one and starts the next. All are stopped afterwards."""
    handles: list[RunningServer] = []
    yield handles
    for handle in handles:
        handle.stop()


def _start(db: peewee.Database, port: int) -> RunningServer:
    return RunningServer(Settings(listen=f"127.0.0.1:{port}"), db)


def test_a_stream_broken_by_a_server_restart_resumes_without_duplicates(
    db: peewee.Database, restartable: list[RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memstore_server.access")
    ids = bulk_users(db, 400, pad=4000)
    port = free_port()
    restartable.append(_start(db, port))
    received: list[int] = []
    restarted = threading.Event()

    def restart() -> None:
        restartable[0].stop(0)
        time.sleep(0.3)  # the client sees UNAVAILABLE and backs off meanwhile
        restartable.append(_start(db, port))
        restarted.set()

    patient = ResumePolicy(max_attempts=10, initial_backoff=0.05, max_backoff=0.5)
    with MemstoreClient(f"127.0.0.1:{port}", resume=patient, options=[("grpc.http2.bdp_probe", 0)]) as client:
        for number, chunk in enumerate(client.user.list_chunked(chunk_size=1)):
            received.extend(u.id for u in chunk)
            if number == 20:
                threading.Thread(target=restart).start()
                assert restarted.wait(10)
    assert len(restartable) == 2, "the server was never restarted"
    assert received == ids

    def streams() -> list[str]:
        return [r.getMessage() for r in caplog.records if "ListUsersChunked" in r.getMessage()]

    # The server logs a stream once its handler returns, which may be just after the client's last read.
    deadline = time.monotonic() + 5
    while len(streams()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(streams()) == 2, streams()  # the broken stream and the resumed one


@pytest.mark.asyncio
async def test_async_list_chunked_resumes_too(db: peewee.Database, restartable: list[RunningServer]) -> None:
    ids = bulk_users(db, 300, pad=4000)
    port = free_port()
    restartable.append(_start(db, port))
    received: list[int] = []
    patient = ResumePolicy(max_attempts=10, initial_backoff=0.05, max_backoff=0.5)
    async with AsyncMemstoreClient(
        f"127.0.0.1:{port}", resume=patient, options=[("grpc.http2.bdp_probe", 0)]
    ) as client:
        number = 0
        async for chunk in client.user.list_chunked(1):
            received.extend(u.id for u in chunk)
            if number == 10:
                restartable[0].stop(0)
                restartable.append(_start(db, port))
            number += 1
    assert len(restartable) == 2
    assert received == ids


def _ids(blocks: list[str]) -> list[int]:
    """The ids of the users of JSON-line blocks, checking every block is whole lines."""
    assert all(block.endswith("\n") for block in blocks)
    return [json.loads(line)["id"] for block in blocks for line in block.split("\n")[:-1]]


def test_export_json_lines_gives_every_user_once_in_id_order(
    client: MemstoreClient, db: peewee.Database
) -> None:
    ids = bulk_users(db, 2300)
    gone = ids[3:400] + ids[1500:1501]
    delete_ids(db, gone)
    kept = [i for i in ids if i not in gone]
    blocks = list(client.user.export_json_lines())
    assert _ids(blocks) == kept
    # Windows count users, whatever the gaps: none but the last holds fewer than the first ones.
    sizes = [block.count("\n") for block in blocks]
    assert all(size >= FIRST_WINDOW for size in sizes[:-1]), sizes
    assert _ids(list(client.user.export_json_lines(cursor=kept[10]))) == kept[11:]
    listed = client.user.list_chunked(filter="metadata.n <= 500")
    assert _ids(list(client.user.export_json_lines(filter="metadata.n <= 500"))) == [
        user.id for chunk in listed for user in chunk
    ]


def test_an_export_broken_by_a_server_restart_resumes_without_duplicates(
    db: peewee.Database, restartable: list[RunningServer]
) -> None:
    ids = bulk_users(db, 2500, pad=2000)
    port = free_port()
    restartable.append(_start(db, port))
    blocks: list[str] = []
    patient = ResumePolicy(max_attempts=10, initial_backoff=0.05, max_backoff=0.5)
    with MemstoreClient(f"127.0.0.1:{port}", resume=patient, options=[("grpc.http2.bdp_probe", 0)]) as client:
        for block in client.user.export_json_lines():
            blocks.append(block)
            if len(blocks) == 1:
                restartable[0].stop(0)
                restartable.append(_start(db, port))
    assert len(restartable) == 2
    assert _ids(blocks) == ids


@pytest.mark.asyncio
async def test_async_export_json_lines_resumes_too(
    db: peewee.Database, restartable: list[RunningServer]
) -> None:
    ids = bulk_users(db, 2500, pad=2000)
    port = free_port()
    restartable.append(_start(db, port))
    blocks: list[str] = []
    patient = ResumePolicy(max_attempts=10, initial_backoff=0.05, max_backoff=0.5)
    async with AsyncMemstoreClient(
        f"127.0.0.1:{port}", resume=patient, options=[("grpc.http2.bdp_probe", 0)]
    ) as client:
        async for block in client.user.export_json_lines():
            blocks.append(block)
            if len(blocks) == 1:
                restartable[0].stop(0)
                restartable.append(_start(db, port))
    assert len(restartable) == 2
    assert _ids(blocks) == ids
