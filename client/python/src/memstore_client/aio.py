"""The asyncio client: the same methods as MemstoreClient, awaited (grpc.aio underneath)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from memstore_client._resuming import resumed_async
from memstore_client._transport import (
    DEFAULT_TIMEOUT,
    ChannelOptions,
    ResumePolicy,
    call_metadata,
    channel_credentials,
    channel_options,
    chunk_size_argument,
)
from memstore_client._watching import WatchCursor
from memstore_client.errors import translate
from memstore_client.models import (
    CreateSessionRequest,
    CreateUserRequest,
    Session,
    UpdateSessionRequest,
    UpdateUserRequest,
    User,
    WatchUsersResponse,
    create_session_proto,
    create_user_proto,
    session_from_proto,
    update_session_proto,
    update_user_proto,
    user_from_proto,
)

Response = TypeVar("Response")
# Named results: inside the clients, ``list`` is a method name.
Users = list[User]
Sessions = list[Session]
_PAGE = 1000


class _Caller:
    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> None:
        self.metadata = metadata
        self.timeout = timeout

    async def __call__(
        self, method: Callable[..., Awaitable[Response]], request: Any, timeout: float | None
    ) -> Response:
        try:
            return await method(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as error:
            raise translate(error) from None


class AsyncUserClient:
    """``client.user`` of AsyncMemstoreClient."""

    def __init__(self, channel: grpc.aio.Channel, caller: _Caller, resume: ResumePolicy) -> None:
        self._stub = users_pb2_grpc.UserServiceStub(channel)
        self._call = caller
        self._resume = resume

    async def add(self, request: CreateUserRequest, *, timeout: float | None = None) -> User:
        response = await self._call(self._stub.CreateUser, create_user_proto(request), timeout)
        return user_from_proto(response.user)

    async def get(self, user_id: str, *, timeout: float | None = None) -> User:
        response = await self._call(self._stub.GetUser, users_pb2.GetUserRequest(user_id=user_id), timeout)
        return user_from_proto(response.user)

    async def update(self, request: UpdateUserRequest, *, timeout: float | None = None) -> User:
        response = await self._call(self._stub.UpdateUser, update_user_proto(request), timeout)
        return user_from_proto(response.user)

    async def delete(self, user_id: str, *, timeout: float | None = None) -> None:
        await self._call(self._stub.DeleteUser, users_pb2.DeleteUserRequest(user_id=user_id), timeout)

    async def list(
        self, limit: int = 0, cursor: int = 0, *, filter: str = "", timeout: float | None = None
    ) -> Users:
        request = users_pb2.ListUsersRequest(limit=limit, cursor=cursor, filter=filter)
        response = await self._call(self._stub.ListUsers, request, timeout)
        return [user_from_proto(user) for user in response.users]

    async def count(self, filter: str = "", *, timeout: float | None = None) -> int:
        request = users_pb2.CountUsersRequest(filter=filter)
        response = await self._call(self._stub.CountUsers, request, timeout)
        return int(response.count)

    async def batch_add(
        self,
        requests: Sequence[CreateUserRequest],
        *,
        skip_existing: bool = False,
        timeout: float | None = None,
    ) -> Users:
        request = users_pb2.BatchCreateUsersRequest(
            requests=[create_user_proto(item) for item in requests], skip_existing=skip_existing
        )
        response = await self._call(self._stub.BatchCreateUsers, request, timeout)
        return [user_from_proto(user) for user in response.users]

    async def get_sessions(self, user_id: str, *, timeout: float | None = None) -> Sessions:
        sessions: Sessions = []
        cursor = 0
        while True:
            request = users_pb2.GetUserSessionsRequest(user_id=user_id, limit=_PAGE, cursor=cursor)
            response = await self._call(self._stub.GetUserSessions, request, timeout)
            sessions.extend(session_from_proto(session) for session in response.sessions)
            if response.next_cursor == 0:
                return sessions
            cursor = response.next_cursor

    async def list_chunked(
        self,
        chunk_size: int = 100,
        cursor: int = 0,
        *,
        filter: str = "",
        chunkSize: int | None = None,  # noqa: N803 - the reference page's spelling
    ) -> AsyncIterator[Users]:
        """As MemstoreClient.user.list_chunked: resumes a broken stream from its last cursor."""
        chunk_size = chunk_size_argument(chunk_size, chunkSize)

        def open_stream(after: int) -> AsyncIterator[users_pb2.ListUsersChunkedResponse]:
            request = users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size, cursor=after, filter=filter)
            return self._stub.ListUsersChunked(request, metadata=self._call.metadata)  # type: ignore[no-any-return]

        async for message in resumed_async(open_stream, cursor, self._resume, last_has_cursor_0=True):
            yield [user_from_proto(user) for user in message.users]

    async def export_json_lines(self, cursor: int = 0, *, filter: str = "") -> AsyncIterator[str]:
        """As MemstoreClient.user.export_json_lines: resumes a broken stream after its last block."""

        def open_stream(after: int) -> AsyncIterator[users_pb2.ExportUsersResponse]:
            request = users_pb2.ExportUsersRequest(cursor=after, filter=filter)
            return self._stub.ExportUsers(request, metadata=self._call.metadata)  # type: ignore[no-any-return]

        async for message in resumed_async(open_stream, cursor, self._resume, last_has_cursor_0=False):
            yield message.json_lines

    async def watch(
        self, resume_token: str = "", send_initial: bool = False
    ) -> AsyncGenerator[WatchUsersResponse, None]:
        """As MemstoreClient.user.watch: resumes a broken stream from its last token."""
        cursor = WatchCursor(resume_token, send_initial)
        failures = 0
        while True:
            stream = self._stub.WatchUsers(cursor.request(), metadata=self._call.metadata)
            try:
                async for message in stream:
                    failures = 0
                    yield cursor.received(message)
                failures += 1  # ended without an error: a server going away; go on elsewhere
                await asyncio.sleep(self._resume.delay(grpc.StatusCode.UNAVAILABLE, 1) or 0)
            except grpc.aio.AioRpcError as error:
                failures += 1
                delay = self._resume.delay(error.code(), failures)
                if delay is None:
                    raise translate(error) from None
                await asyncio.sleep(delay)
            finally:
                stream.cancel()


class AsyncSessionClient:
    """``client.session`` of AsyncMemstoreClient."""

    def __init__(self, channel: grpc.aio.Channel, caller: _Caller) -> None:
        self._stub = sessions_pb2_grpc.SessionServiceStub(channel)
        self._call = caller

    async def add(self, request: CreateSessionRequest, *, timeout: float | None = None) -> Session:
        response = await self._call(self._stub.CreateSession, create_session_proto(request), timeout)
        return session_from_proto(response.session)

    async def get(self, session_id: str, *, timeout: float | None = None) -> Session:
        request = sessions_pb2.GetSessionRequest(session_id=session_id)
        response = await self._call(self._stub.GetSession, request, timeout)
        return session_from_proto(response.session)

    async def update(self, request: UpdateSessionRequest, *, timeout: float | None = None) -> Session:
        response = await self._call(self._stub.UpdateSession, update_session_proto(request), timeout)
        return session_from_proto(response.session)

    async def delete(self, session_id: str, *, timeout: float | None = None) -> None:
        request = sessions_pb2.DeleteSessionRequest(session_id=session_id)
        await self._call(self._stub.DeleteSession, request, timeout)

    async def list(
        self,
        limit: int = 0,
        cursor: int = 0,
        *,
        user_id: str = "",
        filter: str = "",
        timeout: float | None = None,
    ) -> Sessions:
        request = sessions_pb2.ListSessionsRequest(limit=limit, cursor=cursor, user_id=user_id, filter=filter)
        response = await self._call(self._stub.ListSessions, request, timeout)
        return [session_from_proto(session) for session in response.sessions]

    async def count(self, filter: str = "", *, timeout: float | None = None) -> int:
        """How many sessions match ``filter`` (every session when it is empty)."""
        request = sessions_pb2.CountSessionsRequest(filter=filter)
        response = await self._call(self._stub.CountSessions, request, timeout)
        return int(response.count)


class AsyncMemstoreClient:
    """A grpc.aio connection to memstore: ``async with AsyncMemstoreClient(address) as client``."""

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: ChannelOptions = (),
        resume: ResumePolicy | None = None,
    ) -> None:
        credentials = channel_credentials(tls)
        all_options = channel_options(options)
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=all_options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=all_options)
        )
        caller = _Caller(call_metadata(api_key), timeout)
        self.user = AsyncUserClient(self._channel, caller, resume or ResumePolicy())
        self.session = AsyncSessionClient(self._channel, caller)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncMemstoreClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
