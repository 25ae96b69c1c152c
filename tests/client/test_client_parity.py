"""Sessions, update semantics and results through the client, and the async twin doing the same."""

from __future__ import annotations

import dataclasses
from datetime import timezone

import pytest
from memstore_client import (
    AsyncMemstoreClient,
    CreateSessionRequest,
    CreateUserRequest,
    MemstoreClient,
    NotFoundError,
    Session,
    UpdateSessionRequest,
    UpdateUserRequest,
    User,
)

from tests.support import unique


def test_update_none_keeps_empty_string_clears_and_mask_replaces(client: MemstoreClient) -> None:
    user_id = unique("user")
    client.user.add(
        CreateUserRequest(user_id=user_id, email="a@example.com", first_name="A", metadata={"a": {"b": 1}})
    )
    kept = client.user.update(UpdateUserRequest(user_id=user_id, first_name="B"))
    assert (kept.email, kept.first_name) == ("a@example.com", "B")
    cleared = client.user.update(UpdateUserRequest(user_id=user_id, email=""))
    assert cleared.email == ""
    merged = client.user.update(UpdateUserRequest(user_id=user_id, metadata={"a": {"c": 2}, "d": [1, 2]}))
    assert merged.metadata == {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    removed = client.user.update(UpdateUserRequest(user_id=user_id, metadata={"a": None}))
    assert removed.metadata == {"d": [1, 2]}
    replaced = client.user.update(
        UpdateUserRequest(user_id=user_id, metadata={"only": True}, last_name="Z", update_mask=["metadata"])
    )
    assert replaced.metadata == {"only": True}
    assert replaced.last_name == ""  # not named by the mask: unchanged (it was never set)


def test_session_operations(client: MemstoreClient) -> None:
    user_id = unique("owner")
    client.user.add(CreateUserRequest(user_id=user_id))
    created = [
        client.session.add(CreateSessionRequest(session_id=unique("s"), user_id=user_id, metadata={"n": n}))
        for n in range(3)
    ]
    assert all(isinstance(s, Session) and s.user_id == user_id for s in created)
    assert client.session.get(created[0].session_id) == created[0]
    updated = client.session.update(UpdateSessionRequest(session_id=created[0].session_id, metadata={"m": 1}))
    assert updated.metadata == {"n": 0, "m": 1}
    assert client.user.get(user_id).session_count == 3
    assert [s.session_id for s in client.user.get_sessions(user_id)] == [s.session_id for s in created]
    page = client.session.list(limit=2, user_id=user_id)
    assert [s.id for s in page] == [s.id for s in created[:2]]
    rest = client.session.list(limit=2, cursor=page[-1].id, user_id=user_id)
    assert [s.id for s in rest] == [created[2].id]
    client.session.delete(created[1].session_id)
    with pytest.raises(NotFoundError):
        client.session.get(created[1].session_id)
    assert client.user.get(user_id).session_count == 2


def test_get_sessions_gathers_every_page(client: MemstoreClient) -> None:
    user_id = unique("many")
    client.user.add(CreateUserRequest(user_id=user_id))
    for _ in range(1005):  # more than one server page of 1000
        client.session.add(CreateSessionRequest(session_id=unique("s"), user_id=user_id))
    sessions = client.user.get_sessions(user_id)
    assert len(sessions) == 1005
    assert [s.id for s in sessions] == sorted(s.id for s in sessions)


def test_results_are_plain_python(client: MemstoreClient) -> None:
    user = client.user.add(
        CreateUserRequest(user_id=unique("plain"), metadata={"nested": {"list": [1, "x"]}})
    )
    assert isinstance(user, User)
    assert type(user.metadata) is dict
    assert user.metadata == {"nested": {"list": [1, "x"]}}
    assert user.created_at.tzinfo == timezone.utc
    assert isinstance(user.id, int)
    assert type(user.metadata["nested"]["list"][0]) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.email = "changed"  # type: ignore[misc]


@pytest.mark.asyncio
async def test_async_client_matches_the_sync_one(
    client: MemstoreClient, async_client: AsyncMemstoreClient
) -> None:
    user_id = unique("twin")
    created = await async_client.user.add(CreateUserRequest(user_id=user_id, metadata={"a": 1}))
    assert client.user.get(user_id) == created
    assert await async_client.user.get(user_id) == created
    updated = await async_client.user.update(UpdateUserRequest(user_id=user_id, metadata={"b": 2}))
    assert client.user.get(user_id) == updated
    session = await async_client.session.add(CreateSessionRequest(session_id=unique("s"), user_id=user_id))
    assert await async_client.session.get(session.session_id) == client.session.get(session.session_id)
    changed = await async_client.session.update(
        UpdateSessionRequest(session_id=session.session_id, metadata={"x": 1})
    )
    assert changed.metadata == {"x": 1}
    assert await async_client.user.get_sessions(user_id) == client.user.get_sessions(user_id)
    assert await async_client.session.list(user_id=user_id) == client.session.list(user_id=user_id)
    cursor = created.id - 1
    assert await async_client.user.list(limit=1, cursor=cursor) == client.user.list(limit=1, cursor=cursor)
    sync_chunks = [[u.id for u in chunk] for chunk in client.user.list_chunked(chunk_size=7, cursor=cursor)]
    async_chunks = [[u.id for u in chunk] async for chunk in async_client.user.list_chunked(7, cursor=cursor)]
    assert async_chunks == sync_chunks
    await async_client.session.delete(session.session_id)
    await async_client.user.delete(user_id)
    with pytest.raises(NotFoundError):
        client.user.get(user_id)


@pytest.mark.parametrize(
    ("stored", "read_back"),
    [
        ({"n": 5}, {"n": 5}),
        ({"n": -(2**53)}, {"n": -(2**53)}),
        ({"n": 2**53 + 2}, {"n": float(2**53 + 2)}),  # past 2**53 a double is no longer exact
        ({"n": 1.5, "m": 5.0}, {"n": 1.5, "m": 5}),  # JSON has one number type: 5.0 is 5
        ({"deep": [{"k": [1, 2.25, True, None]}]}, {"deep": [{"k": [1, 2.25, True, None]}]}),
    ],
)
def test_integers_come_back_as_ints(
    client: MemstoreClient, stored: dict[str, object], read_back: object
) -> None:
    user = client.user.add(CreateUserRequest(user_id=unique("numbers"), metadata=stored))
    fetched = client.user.get(user.user_id)
    assert fetched.metadata == read_back
    assert {key: type(value) for key, value in fetched.metadata.items()} == {
        key: type(value) for key, value in read_back.items()
    }
