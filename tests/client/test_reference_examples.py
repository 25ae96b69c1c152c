"""The reference page's examples, verbatim but for the import and the connection line."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from memstore_client import AsyncMemstoreClient, CreateUserRequest, MemstoreClient, UpdateUserRequest, User

from tests.support import ServerAddress

pytestmark = pytest.mark.usefixtures("empty_store")


def test_reference_examples_sync(server: ServerAddress) -> None:
    processed: list[list[User]] = []

    def process(users: list[User]) -> None:
        processed.append(users)

    client = MemstoreClient(server.target)
    user = client.user.add(
        CreateUserRequest(
            user_id="user123",
            email="jane@example.com",
            first_name="Jane",
            last_name="Smith",
            metadata={"foo": "bar"},
        )
    )
    fetched = client.user.get("user123")
    updated = client.user.update(UpdateUserRequest(user_id="user123", metadata={"foo": "updated_bar"}))
    sessions = client.user.get_sessions("user123")
    listed = client.user.list(limit=10, cursor=0)
    for users in client.user.list_chunked(chunkSize=100):  # the page's own spelling, verbatim
        process(users)
    client.user.delete("user123")
    client.close()

    assert (user.user_id, user.email, user.first_name, user.last_name) == (
        "user123",
        "jane@example.com",
        "Jane",
        "Smith",
    )
    assert user.metadata == {"foo": "bar"}
    assert isinstance(user.metadata, dict)
    assert user.created_at.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - user.created_at).total_seconds()) < 60
    assert fetched == user
    assert updated.metadata == {"foo": "updated_bar"}
    assert updated.email == "jane@example.com"  # absent fields keep their values
    assert updated.updated_at > user.updated_at
    assert sessions == []
    assert [u.user_id for u in listed] == ["user123"]
    assert [[u.user_id for u in chunk] for chunk in processed] == [["user123"]]
    with MemstoreClient(server.target) as check:
        assert check.user.list(limit=10, cursor=0) == []


@pytest.mark.asyncio
async def test_reference_examples_async(server: ServerAddress) -> None:
    processed: list[list[User]] = []

    def process(users: list[User]) -> None:
        processed.append(users)

    client = AsyncMemstoreClient(server.target)
    user = await client.user.add(
        CreateUserRequest(
            user_id="user123",
            email="jane@example.com",
            first_name="Jane",
            last_name="Smith",
            metadata={"foo": "bar"},
        )
    )
    fetched = await client.user.get("user123")
    updated = await client.user.update(UpdateUserRequest(user_id="user123", metadata={"foo": "updated_bar"}))
    sessions = await client.user.get_sessions("user123")
    users = await client.user.list(limit=10, cursor=0)
    async for chunk in client.user.list_chunked(100):
        process(chunk)
    await client.user.delete("user123")
    await client.close()

    assert user.metadata == {"foo": "bar"}
    assert fetched == user
    assert updated.metadata == {"foo": "updated_bar"}
    assert sessions == []
    assert [u.user_id for u in users] == ["user123"]
    assert [[u.user_id for u in chunk] for chunk in processed] == [["user123"]]


@pytest.mark.asyncio
async def test_chunk_size_is_also_accepted_as_chunksize_and_never_both(server: ServerAddress) -> None:
    with MemstoreClient(server.target) as client:
        for number in range(5):
            client.user.add(CreateUserRequest(user_id=f"chunked-{number}"))
        with pytest.raises(TypeError, match="both chunk_size and chunkSize"):
            next(iter(client.user.list_chunked(5, chunkSize=7)))
        sync_sizes = [len(chunk) for chunk in client.user.list_chunked(chunkSize=2)]
    async with AsyncMemstoreClient(server.target) as aclient:
        async_sizes = [len(chunk) async for chunk in aclient.user.list_chunked(chunkSize=3)]
    assert sync_sizes == [2, 2, 1]
    assert async_sizes == [3, 2]
