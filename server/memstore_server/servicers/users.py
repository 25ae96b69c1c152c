"""UserService: request -> validated arguments -> store call (on a database thread) -> response.

Users come back from the store already serialized, so the responses that carry
them are framed as bytes (responses.py), which the handler table sends as they are.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

from memstore.v1 import users_pb2, users_pb2_grpc

from memstore_server import metrics, responses, stream_memory
from memstore_server.blocking import Blocking
from memstore_server.coalescing import PointReads
from memstore_server.errors import FieldViolation, InvalidArgument, user_not_found
from memstore_server.exporting import Export
from memstore_server.filtering import USERS, Condition
from memstore_server.store.user_writes import Change
from memstore_server.store.users import FramedUsers, KeysetPage, NewUser, UserStore
from memstore_server.validation import RequestChecker
from memstore_server.watching import Watch, WatchRequest

_UPDATABLE_USER_FIELDS = ("email", "first_name", "last_name", "metadata")


def _new_user(check: RequestChecker, prefix: str, request: users_pb2.CreateUserRequest) -> NewUser:
    """The fields of a CreateUserRequest, checked; violations are named ``prefix + field``."""
    return NewUser(
        user_id=check.identifier(f"{prefix}user_id", request.user_id),
        email=check.email(f"{prefix}email", request.email),
        first_name=check.name(f"{prefix}first_name", request.first_name),
        last_name=check.name(f"{prefix}last_name", request.last_name),
        metadata=check.metadata(f"{prefix}metadata", request.metadata),
    )


class UserServicer(users_pb2_grpc.UserServiceServicer):
    def __init__(
        self, store: UserStore, run: Blocking, *, max_message_bytes: int, watch: Watch, export: Export
    ) -> None:
        self._store = store
        self._watch = watch
        self._export = export
        self._run = run
        self._max_message_bytes = max_message_bytes

        async def fetch_many(user_ids: Any) -> dict[str, bytes]:
            return await run(store.get_many, user_ids)

        self._point_reads = PointReads(fetch_many)

    async def CreateUser(  # noqa: N802 - gRPC method names
        self, request: users_pb2.CreateUserRequest, context: Any
    ) -> bytes:
        check = RequestChecker()
        new = _new_user(check, "", request)
        check.raise_if_any()
        user = await self._run(
            self._store.create, new.user_id, new.email, new.first_name, new.last_name, new.metadata
        )
        return responses.created_user(user)

    async def BatchCreateUsers(  # noqa: N802
        self, request: users_pb2.BatchCreateUsersRequest, context: Any
    ) -> bytes:
        check = RequestChecker()
        new_users = []
        if check.batch_size("requests", len(request.requests)):
            new_users = [_new_user(check, f"requests[{i}].", item) for i, item in enumerate(request.requests)]
        check.raise_if_any()
        max_bytes = self._max_message_bytes

        def check_result(users: list[bytes]) -> None:
            size = responses.batch_created_size(users)
            if size > max_bytes:
                raise InvalidArgument(
                    [
                        FieldViolation(
                            "requests",
                            f"the created users would make a {size}-byte response, more than this "
                            f"server sends in one message ({max_bytes} bytes): send fewer per call",
                        )
                    ],
                    reason="BATCH_TOO_LARGE",
                )

        create = functools.partial(
            self._store.create_many, skip_existing=request.skip_existing, check_result=check_result
        )
        return responses.batch_created_users(await self._run(create, new_users))

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> bytes:  # noqa: N802
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        check.raise_if_any()
        user = await self._point_reads.get(user_id)
        if user is None:
            raise user_not_found(user_id)
        return responses.got_user(user)

    async def UpdateUser(self, request: users_pb2.UpdateUserRequest, context: Any) -> bytes:  # noqa: N802
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        email = check.email("email", request.email)
        first_name = check.name("first_name", request.first_name)
        last_name = check.name("last_name", request.last_name)
        metadata = check.metadata("metadata", request.metadata)
        metadata_json = None if metadata is None else metadata.json_text
        if request.HasField("update_mask"):
            masked = check.update_mask("update_mask", request.update_mask, _UPDATABLE_USER_FIELDS)
            changes = Change(
                email=email if "email" in masked else None,
                first_name=first_name if "first_name" in masked else None,
                last_name=last_name if "last_name" in masked else None,
                metadata=metadata_json if "metadata" in masked else None,
                replace_metadata=True,
            )
        else:
            changes = Change(
                email=email if request.HasField("email") else None,
                first_name=first_name if request.HasField("first_name") else None,
                last_name=last_name if request.HasField("last_name") else None,
                metadata=metadata_json if request.HasField("metadata") else None,
            )
        check.raise_if_any()
        return responses.updated_user(await self._run(self._store.update, user_id, changes))

    async def DeleteUser(  # noqa: N802
        self, request: users_pb2.DeleteUserRequest, context: Any
    ) -> users_pb2.DeleteUserResponse:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        check.raise_if_any()
        await self._run(self._store.delete, user_id)
        return users_pb2.DeleteUserResponse()

    async def ListUsers(self, request: users_pb2.ListUsersRequest, context: Any) -> bytes:  # noqa: N802
        check = RequestChecker()
        limit = check.page_size("limit", request.limit)
        cursor = check.cursor("cursor", request.cursor)
        where = check.filter("filter", request.filter, USERS)
        check.raise_if_any()
        page = await self._run(self._store.page, cursor, limit, where)
        return responses.users_page(page, self._max_message_bytes)

    async def CountUsers(  # noqa: N802
        self, request: users_pb2.CountUsersRequest, context: Any
    ) -> users_pb2.CountUsersResponse:
        check = RequestChecker()
        where = check.filter("filter", request.filter, USERS)
        check.raise_if_any()
        return users_pb2.CountUsersResponse(count=await self._run(self._store.count, where))

    async def ListUsersChunked(  # noqa: N802
        self, request: users_pb2.ListUsersChunkedRequest, context: Any
    ) -> AsyncIterator[bytes]:
        """Every user after the cursor, in keyset pages of ``chunk_size``, framed by PostgreSQL.

        One page is always being fetched while the one before it is sent: the
        arrival of page N+1 tells whether page N is the last (next_cursor 0), and
        page N+2 is asked for before page N is written, so the database and the
        client work at the same time. When the call ends early (cancelled, past
        its deadline), the fetch still running is cancelled with it, so no
        further page is read.
        """
        check = RequestChecker()
        chunk_size = check.page_size("chunk_size", request.chunk_size)
        cursor = check.cursor("cursor", request.cursor)
        where = check.filter("filter", request.filter, USERS)
        check.raise_if_any()
        tag = responses.CHUNK_USERS_TAG

        def read_page(after: int) -> FramedUsers:
            return self._store.framed_page(after, chunk_size, tag, where)

        def fetch(after: int) -> asyncio.Future[FramedUsers]:
            return asyncio.ensure_future(self._run.bulk(_framed_bytes, _PAGES_HELD, read_page, after))

        page = await self._run.bulk(_framed_bytes, _PAGES_HELD, read_page, cursor)
        following = fetch(page.last_id) if page.count else None
        try:
            while following is not None:
                pieces = await self._fitting(page, where)
                next_page = await following
                following = fetch(next_page.last_id) if next_page.count else None
                for frames, count, last_id in pieces[:-1]:
                    yield responses.framed_chunk(frames, last_id)
                    metrics.USERS_STREAMED.inc(count)
                frames, count, _ = pieces[-1]
                # The stream's very last message says so with next_cursor 0.
                yield responses.framed_chunk(frames, page.last_id if next_page.count else 0)
                metrics.USERS_STREAMED.inc(count)
                page = next_page
        finally:
            if following is not None:
                following.cancel()

    async def ExportUsers(  # noqa: N802
        self, request: users_pb2.ExportUsersRequest, context: Any
    ) -> AsyncIterator[bytes]:
        """Every user after the cursor as JSON lines built by PostgreSQL (exporting.py)."""
        check = RequestChecker()
        cursor = check.cursor("cursor", request.cursor)
        where = check.filter("filter", request.filter, USERS)
        check.raise_if_any()
        async for message in self._export.stream(cursor, where):
            yield message

    async def _fitting(self, page: FramedUsers, where: Condition | None) -> list[tuple[bytes, int, int]]:
        """``page`` as pieces that each fit one message: itself, or (when its users are too
        large together, which few are, or one lacks stored bytes) the same ids read again
        user by user and cut."""
        if responses.fits(page, self._max_message_bytes):
            return [(page.frames, page.count, page.last_id)]
        users = await self._run.bulk(
            _keyset_bytes, _PAGES_HELD, self._store.users_through, page.after, page.last_id, where
        )
        stream_memory.free(len(page.frames))  # replaced by ``users``
        if not users.ids:  # every one of them deleted in between
            return [(b"", 0, page.last_id)]
        return responses.chunks_of(users, self._max_message_bytes)

    async def GetUserSessions(  # noqa: N802
        self, request: users_pb2.GetUserSessionsRequest, context: Any
    ) -> users_pb2.GetUserSessionsResponse:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        limit = check.page_size("limit", request.limit)
        cursor = check.cursor("cursor", request.cursor)
        check.raise_if_any()
        page = await self._run(self._store.sessions, user_id, cursor, limit)
        return responses.user_sessions_page(page, self._max_message_bytes)

    async def WatchUsers(  # noqa: N802
        self, request: users_pb2.WatchUsersRequest, context: Any
    ) -> AsyncIterator[bytes]:
        """The change feed; the stream's layout is watching.py's, the shared reading feed.py's."""
        async for message in self._watch.stream(WatchRequest(request.resume_token, request.send_initial)):
            yield message


# Pages a ListUsersChunked stream holds at most: the one being written, the next one (read to
# know whether this one is the last), and the one after it being read.
_PAGES_HELD = 3


def _framed_bytes(page: FramedUsers) -> int:
    return len(page.frames)


def _keyset_bytes(page: KeysetPage) -> int:
    return sum(map(len, page.users))
