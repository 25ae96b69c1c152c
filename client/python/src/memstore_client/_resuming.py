"""Streams read by cursor (ListUsersChunked, ExportUsers), reopened from their last cursor when broken.

One loop for every such stream, sync and async, so ``list_chunked``, ``export_json_lines``
and the ``memstore export`` command resume alike: after a status the policy calls
retryable, the stream is opened again after the last message received (its
``next_cursor``), so no user comes twice and none is missed; the count of failures
resets whenever a message arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from memstore_client._transport import ResumePolicy
from memstore_client.errors import translate

M = TypeVar("M")


def _cursor_field(message: Any) -> int:
    cursor: int = message.next_cursor
    return cursor


def resumed(
    open_stream: Callable[[int], Iterable[M]],
    cursor: int,
    policy: ResumePolicy,
    *,
    last_has_cursor_0: bool,
    cursor_of: Callable[[M], int] = _cursor_field,
) -> Iterator[M]:
    """Every message of ``open_stream(cursor)``, reopened after the last one's cursor on a
    retryable status; a MemstoreError when the policy gives up.

    ``last_has_cursor_0``: the stream says its last message is the last (ListUsersChunked's
    next_cursor 0), so one that ends without it is asked again; otherwise (ExportUsers) a
    stream that ends without an error is complete.
    """
    failures = 0
    while True:
        stream: Any = open_stream(cursor)
        received = False
        try:
            for message in stream:
                failures, received = 0, True
                cursor = cursor_of(message)
                yield message
                if last_has_cursor_0 and cursor == 0:
                    return
            if not last_has_cursor_0 or not received:
                return  # all of them, or none (more) after the cursor
            # It ended without its last message (next_cursor 0): ask again from where it stopped.
        except grpc.RpcError as error:
            failures += 1
            delay = policy.delay(error.code(), failures)
            if delay is None:
                raise translate(error) from None
            time.sleep(delay)
        finally:
            stream.cancel()


async def resumed_async(
    open_stream: Callable[[int], AsyncIterable[M]],
    cursor: int,
    policy: ResumePolicy,
    *,
    last_has_cursor_0: bool,
) -> AsyncIterator[M]:
    """``resumed`` for grpc.aio streams."""
    failures = 0
    while True:
        stream: Any = open_stream(cursor)
        received = False
        try:
            async for message in stream:
                failures, received = 0, True
                cursor = _cursor_field(message)
                yield message
                if last_has_cursor_0 and cursor == 0:
                    return
            if not last_has_cursor_0 or not received:
                return
        except grpc.aio.AioRpcError as error:
            failures += 1
            delay = policy.delay(error.code(), failures)
            if delay is None:
                raise translate(error) from None
            await asyncio.sleep(delay)
        finally:
            stream.cancel()
