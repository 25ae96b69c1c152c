"""Filters, counts and batch creation through the Python client, sync and async alike."""

from __future__ import annotations

import pytest
from memstore_client import (
    AlreadyExistsError,
    AsyncMemstoreClient,
    CreateSessionRequest,
    CreateUserRequest,
    InvalidArgumentError,
    MemstoreClient,
)

from tests.support import unique


def _people(tag: str) -> list[CreateUserRequest]:
    """Five users marked with ``tag``; plan "pro" for the even ones."""
    return [
        CreateUserRequest(
            user_id=f"{tag}-{n}",
            email=f"{tag}-{n}@Example.com",
            metadata={"tag": tag, "plan": "pro" if n % 2 == 0 else "free", "n": n},
        )
        for n in range(5)
    ]


def test_filter_count_and_batch_add(client: MemstoreClient) -> None:
    tag = unique("cf")
    created = client.user.batch_add(_people(tag))
    assert [user.user_id for user in created] == [f"{tag}-{n}" for n in range(5)]
    assert created[0].metadata == {"tag": tag, "plan": "pro", "n": 0}
    pro = f'metadata.tag = "{tag}" AND metadata.plan = "pro"'
    assert client.user.count(filter=pro) == 3
    assert client.user.count(filter=f'metadata.tag = "{tag}"') == 5
    first = client.user.list(limit=2, filter=pro)
    assert [user.user_id for user in first] == [f"{tag}-0", f"{tag}-2"]
    rest = client.user.list(limit=2, cursor=first[-1].id, filter=pro)
    assert [user.user_id for user in rest] == [f"{tag}-4"]
    chunks = list(
        client.user.list_chunked(chunk_size=2, filter=f'email = "{tag.upper()}*" AND metadata.n > 1')
    )
    assert [[user.user_id for user in chunk] for chunk in chunks] == [[f"{tag}-2", f"{tag}-3"], [f"{tag}-4"]]
    # skip_existing: the existing ones are left alone and left out; without it, nothing is created.
    again = [*_people(tag)[3:], CreateUserRequest(user_id=f"{tag}-5", metadata={"tag": tag})]
    with pytest.raises(AlreadyExistsError) as refused:
        client.user.batch_add(again)
    assert refused.value.reason == "USER_ALREADY_EXISTS"
    assert client.user.count(filter=f'metadata.tag = "{tag}"') == 5
    added = client.user.batch_add(again, skip_existing=True)
    assert [user.user_id for user in added] == [f"{tag}-5"]
    assert client.user.count(filter=f'metadata.tag = "{tag}"') == 6


def test_sessions_filter_and_count(client: MemstoreClient) -> None:
    tag = unique("cs")
    client.user.add(CreateUserRequest(user_id=tag))
    for n in range(3):
        client.session.add(CreateSessionRequest(session_id=f"{tag}-{n}", user_id=tag, metadata={"n": n}))
    assert client.session.count(filter=f'user_id = "{tag}" AND metadata.n >= 1') == 2
    page = client.session.list(limit=10, user_id=tag, filter="NOT metadata.n = 1")
    assert [session.session_id for session in page] == [f"{tag}-0", f"{tag}-2"]


def test_a_bad_filter_is_an_invalid_argument_naming_its_character(client: MemstoreClient) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        client.user.count(filter="metadata.plan = ")
    assert raised.value.reason == "INVALID_FILTER"
    assert raised.value.field_violations[0].field == "filter"
    assert raised.value.field_violations[0].description.startswith("at character 17: ")
    with pytest.raises(InvalidArgumentError):
        list(client.user.list_chunked(filter="nope"))
    with pytest.raises(InvalidArgumentError):
        client.session.list(filter="email = 1")


@pytest.mark.asyncio
async def test_the_async_client_does_the_same(async_client: AsyncMemstoreClient) -> None:
    tag = unique("caf")
    created = await async_client.user.batch_add(_people(tag))
    assert len(created) == 5
    pro = f'metadata.tag = "{tag}" AND metadata.plan = "pro"'
    assert await async_client.user.count(filter=pro) == 3
    assert [user.user_id for user in await async_client.user.list(limit=10, filter=pro)] == [
        f"{tag}-0",
        f"{tag}-2",
        f"{tag}-4",
    ]
    chunks = [chunk async for chunk in async_client.user.list_chunked(chunk_size=1, filter=pro)]
    assert [[user.user_id for user in chunk] for chunk in chunks] == [
        [f"{tag}-0"],
        [f"{tag}-2"],
        [f"{tag}-4"],
    ]
    assert await async_client.user.batch_add(_people(tag), skip_existing=True) == []
    await async_client.session.add(CreateSessionRequest(session_id=f"{tag}-s", metadata={"tag": tag}))
    assert await async_client.session.count(filter=f'metadata.tag = "{tag}"') == 1
    found = await async_client.session.list(filter=f'metadata.tag = "{tag}"')
    assert [session.session_id for session in found] == [f"{tag}-s"]
    with pytest.raises(InvalidArgumentError) as raised:
        await async_client.user.list(filter="(")
    assert raised.value.reason == "INVALID_FILTER"
