"""One WatchUsers stream: its first message, the initial listing, then the changes.

The servicer validates nothing else than the token; here the stream is laid out
(see the contract in users.proto) on top of the process's change feed (feed.py),
which does the reading that watchers share.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from memstore.v1 import users_pb2

from memstore_server import responses, resume_tokens
from memstore_server.blocking import Blocking
from memstore_server.feed import HEARTBEAT_SHARE, ChangeFeed
from memstore_server.store.changes import (
    ChangeBatch,
    InitialListing,
    Position,
    Snapshot,
    resume_token_expired,
)

EXISTING = users_pb2.UserEvent.TYPE_EXISTING
# Users per page of the initial listing: one message's worth at most.
_LISTING_PAGE = responses.MAX_EVENTS_PER_MESSAGE


def _page_bytes(page: tuple[list[int], list[bytes]]) -> int:
    return sum(map(len, page[1]))


@dataclass(frozen=True)
class WatchRequest:
    resume_token: str
    send_initial: bool


class Watch:
    """Streams of WatchUsers for one server."""

    def __init__(self, feed: ChangeFeed, run: Blocking, *, max_message_bytes: int, listings: int) -> None:
        self._feed = feed
        self._run = run
        self._max_bytes = max_message_bytes
        # Initial listings each hold a connection of their own for their length: a few at a time.
        self._listing_slots = asyncio.Semaphore(listings)

    async def stream(self, request: WatchRequest) -> AsyncIterator[bytes]:
        feed_id = await self._feed.feed_id()
        async with self._feed.watching():
            if request.resume_token:
                position = await self._resumed(feed_id, request.resume_token)
                yield responses.watch_message([], resume_tokens.encode(feed_id, position))
            elif request.send_initial:
                position = Position(Snapshot(1, 1))  # replaced by the listing's own
                async for message, position in self._initial(feed_id):  # noqa: B007 - kept on purpose
                    yield message
            else:
                position = await self._feed.fresh_head()
                yield responses.watch_message([], resume_tokens.encode(feed_id, position))
            async for message in self._changes(feed_id, position):
                yield message

    async def _resumed(self, feed_id: str, token: str) -> Position:
        position = resume_tokens.decode(feed_id, token)
        state = await self._run(self._feed.store.state)
        if resume_tokens.is_from_the_future(position, state.now):
            raise resume_tokens.invalid("a token of transactions this database has not run")
        if state.pruned_below > position.seen.xmin:
            raise resume_token_expired()
        return position

    async def _initial(self, feed_id: str) -> AsyncIterator[tuple[bytes, Position]]:
        """Every user as of one snapshot, then initial_complete; each with that snapshot's token."""
        async with self._listing_slots:
            listing = self._feed.store.listing()
            opening = asyncio.ensure_future(self._run(listing.open))
            try:
                await asyncio.shield(opening)
            except asyncio.CancelledError:
                opening.add_done_callback(lambda _: listing.close())
                raise
            try:
                position = Position(listing.snapshot)
                token = resume_tokens.encode(feed_id, position)
                yield responses.watch_message([], token), position
                async for message in self._listed(listing, token):
                    yield message, position
                yield responses.watch_message([], token, initial_complete=True), position
            finally:
                listing.close()

    async def _listed(self, listing: InitialListing, token: str) -> AsyncIterator[bytes]:
        after = 0
        while True:
            ids, users = await self._run.bulk(_page_bytes, 1, listing.page, after, _LISTING_PAGE)
            if not ids:
                return
            events = [responses.user_event(EXISTING, 0, listing.taken_micros, user) for user in users]
            for start, end in responses.watch_cuts(events, len(token), self._max_bytes):
                yield responses.watch_message(events[start:end], token)
            after = ids[-1]

    async def _changes(self, feed_id: str, position: Position) -> AsyncIterator[bytes]:
        """Every change after ``position``, and an empty message with a fresh token whenever
        nothing was sent for a share of the heartbeat."""
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        quiet = self._feed.heartbeat * HEARTBEAT_SHARE
        while True:
            batch = self._feed.kept_batch(position)
            if batch is None and not self._feed.is_head(position):
                batch = await self._feed.read_for(position)
            if batch is None or batch.end == position:  # nothing new yet: wait for the feed
                if loop.time() - last_sent >= quiet:
                    yield responses.watch_message([], resume_tokens.encode(feed_id, position))
                    last_sent = loop.time()
                await self._feed.published()
                continue
            position = batch.end
            if batch.changes:
                for message in self._messages(feed_id, batch):
                    yield message
                last_sent = loop.time()
            elif loop.time() - last_sent >= quiet:
                yield responses.watch_message([], resume_tokens.encode(feed_id, position))
                last_sent = loop.time()

    def _messages(self, feed_id: str, batch: ChangeBatch) -> list[bytes]:
        events = [
            responses.user_event(change.type, change.sequence, change.commit_micros, change.user)
            for change in batch.changes
        ]
        # The longest token of this batch: one inside its window.
        longest = len(
            resume_tokens.encode(
                feed_id, Position(batch.start.seen, batch.window, batch.changes[-1].sequence)
            )
        )
        return [
            responses.watch_message(
                events[start:end], resume_tokens.encode(feed_id, batch.position_after(end - 1))
            )
            for start, end in responses.watch_cuts(events, longest, self._max_bytes)
        ]
