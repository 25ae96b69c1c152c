"""Fixtures for the client tests: clients connected to the suite's real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from memstore_client import AsyncMemstoreClient, MemstoreClient

from tests.support import ServerAddress


@pytest.fixture
def client(server: ServerAddress) -> Iterator[MemstoreClient]:
    with MemstoreClient(server.target) as connected:
        yield connected


@pytest_asyncio.fixture
async def async_client(server: ServerAddress) -> AsyncIterator[AsyncMemstoreClient]:
    async with AsyncMemstoreClient(server.target) as connected:
        yield connected
