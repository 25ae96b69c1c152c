"""The synchronous client: ``MemstoreClient("localhost:50051").user.get("user123")``."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from memstore.v1 import sessions_pb2, sessions_pb2_grpc, users_pb2, users_pb2_grpc

from memstore_client._resuming import resumed
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
# Sessions fetched per request when get_sessions gathers all of a user's sessions.
_PAGE = 1000


class _Caller:
    """Sends one unary call with the client's deadline and metadata; failures become MemstoreErrors."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> None:
        self.metadata = metadata
        self.timeout = timeout

    def __call__(self, method: Callable[..., Response], request: Any, timeout: float | None) -> Response:
        try:
            return method(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata
            )
        except grpc.RpcError as error:
            raise translate(error) from None


class UserClient:
    """``client.user``: the reference page's user operations."""

    def __init__(self, channel: grpc.Channel, caller: _Caller, resume: ResumePolicy) -> None:
        self._stub = users_pb2_grpc.UserServiceStub(channel)
        self._call = caller
        self._resume = resume

    def add(self, request: CreateUserRequest, *, timeout: float | None = None) -> User:
        response = self._call(self._stub.CreateUser, create_user_proto(request), timeout)
        return user_from_proto(response.user)

    def get(self, user_id: str, *, timeout: float | None = None) -> User:
        response = self._call(self._stub.GetUser, users_pb2.GetUserRequest(user_id=user_id), timeout)
        return user_from_proto(response.user)

    def update(self, request: UpdateUserRequest, *, timeout: float | None = None) -> User:
        response = self._call(self._stub.UpdateUser, update_user_proto(request), timeout)
        return user_from_proto(response.user)

    def delete(self, user_id: str, *, timeout: float | None = None) -> None:
        self._call(self._stub.DeleteUser, users_pb2.DeleteUserRequest(user_id=user_id), timeout)

    def list(
        self, limit: int = 0, cursor: int = 0, *, filter: str = "", timeout: float | None = None
    ) -> Users:
        """One page of users after ``cursor`` (an id), only those matching ``filter`` when given
        (see the README's filtering section); pass the last user's ``id`` to get the next."""
        request = users_pb2.ListUsersRequest(limit=limit, cursor=cursor, filter=filter)
        response = self._call(self._stub.ListUsers, request, timeout)
        return [user_from_proto(user) for user in response.users]

    def count(self, filter: str = "", *, timeout: float | None = None) -> int:
        """How many users match ``filter`` (every user when it is empty)."""
        response = self._call(self._stub.CountUsers, users_pb2.CountUsersRequest(filter=filter), timeout)
        return int(response.count)

    def batch_add(
        self,
        requests: Sequence[CreateUserRequest],
        *,
        skip_existing: bool = False,
        timeout: float | None = None,
    ) -> Users:
        """Create up to 1,000 users in one transaction, all or none; the created users in request
        order. With ``skip_existing``, users whose ``user_id`` exists are left alone and left out."""
        request = users_pb2.BatchCreateUsersRequest(
            requests=[create_user_proto(item) for item in requests], skip_existing=skip_existing
        )
        response = self._call(self._stub.BatchCreateUsers, request, timeout)
        return [user_from_proto(user) for user in response.users]

    def get_sessions(self, user_id: str, *, timeout: float | None = None) -> Sessions:
        """All of the user's sessions, in id order (gathered page by page)."""
        sessions: Sessions = []
        cursor = 0
        while True:
            request = users_pb2.GetUserSessionsRequest(user_id=user_id, limit=_PAGE, cursor=cursor)
            response = self._call(self._stub.GetUserSessions, request, timeout)
            sessions.extend(session_from_proto(session) for session in response.sessions)
            if response.next_cursor == 0:
                return sessions
            cursor = response.next_cursor

    def list_chunked(
        self,
        chunk_size: int = 100,
        cursor: int = 0,
        *,
        filter: str = "",
        chunkSize: int | None = None,  # noqa: N803 - the reference page's spelling
    ) -> Iterator[Users]:
        """Every user after ``cursor`` (only those matching ``filter`` when given), ``chunk_size``
        at a time, over one ListUsersChunked stream.

        A stream broken by a retryable status (the server restarting, say) is resumed
        from the last chunk received, so no user comes twice and none is missed. The
        stream has no deadline: it lasts as long as the table. ``chunkSize`` is the
        reference page's name for ``chunk_size``, accepted so its example runs as written.
        """
        chunk_size = chunk_size_argument(chunk_size, chunkSize)

        def open_stream(after: int) -> Iterator[users_pb2.ListUsersChunkedResponse]:
            request = users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size, cursor=after, filter=filter)
            return self._stub.ListUsersChunked(request, metadata=self._call.metadata)  # type: ignore[no-any-return]

        for message in resumed(open_stream, cursor, self._resume, last_has_cursor_0=True):
            yield [user_from_proto(user) for user in message.users]

    def export_json_lines(self, cursor: int = 0, *, filter: str = "") -> Iterator[str]:
        """Every user after ``cursor`` (only those matching ``filter`` when given) as JSON lines
        built by the server (ExportUsers): blocks of whole lines, each ending in a newline, in id
        order, up to 4,000 users a block. What ``memstore export`` writes; far cheaper than
        turning ``list_chunked``'s users into JSON here.

        A stream broken by a retryable status is resumed after the last block received, so no
        user comes twice and none is missed. The stream has no deadline.
        """

        def open_stream(after: int) -> Iterator[users_pb2.ExportUsersResponse]:
            request = users_pb2.ExportUsersRequest(cursor=after, filter=filter)
            return self._stub.ExportUsers(request, metadata=self._call.metadata)  # type: ignore[no-any-return]

        for message in resumed(open_stream, cursor, self._resume, last_has_cursor_0=False):
            yield message.json_lines

    def watch(
        self, resume_token: str = "", send_initial: bool = False
    ) -> Generator[WatchUsersResponse, None, None]:
        """Every change to users, as WatchUsers messages, for as long as the caller iterates.

        With ``send_initial``, every existing user comes first (EXISTING events), then a
        message with ``initial_complete``. With ``resume_token`` (from any message), the
        changes after it. Empty messages (heartbeats) bring fresh tokens while nothing
        changes. A stream broken by a retryable status is resumed by itself from the last
        token received (see WatchUsersResponse.snapshot_restarted for a break during the
        snapshot), so nothing is missed, and an event may come twice. It has no deadline.
        """
        cursor = WatchCursor(resume_token, send_initial)
        failures = 0
        while True:
            stream = self._stub.WatchUsers(cursor.request(), metadata=self._call.metadata)
            try:
                for message in stream:
                    failures = 0
                    yield cursor.received(message)
                failures += 1  # ended without an error: a server going away; go on elsewhere
                time.sleep(self._resume.delay(grpc.StatusCode.UNAVAILABLE, 1) or 0)
            except grpc.RpcError as error:
                failures += 1
                delay = self._resume.delay(error.code(), failures)
                if delay is None:
                    raise translate(error) from None
                time.sleep(delay)
            finally:
                stream.cancel()


class SessionClient:
    """``client.session``: session operations in the same style."""

    def __init__(self, channel: grpc.Channel, caller: _Caller) -> None:
        self._stub = sessions_pb2_grpc.SessionServiceStub(channel)
        self._call = caller

    def add(self, request: CreateSessionRequest, *, timeout: float | None = None) -> Session:
        response = self._call(self._stub.CreateSession, create_session_proto(request), timeout)
        return session_from_proto(response.session)

    def get(self, session_id: str, *, timeout: float | None = None) -> Session:
        response = self._call(
            self._stub.GetSession, sessions_pb2.GetSessionRequest(session_id=session_id), timeout
        )
        return session_from_proto(response.session)

    def update(self, request: UpdateSessionRequest, *, timeout: float | None = None) -> Session:
        response = self._call(self._stub.UpdateSession, update_session_proto(request), timeout)
        return session_from_proto(response.session)

    def delete(self, session_id: str, *, timeout: float | None = None) -> None:
        self._call(
            self._stub.DeleteSession, sessions_pb2.DeleteSessionRequest(session_id=session_id), timeout
        )

    def list(
        self,
        limit: int = 0,
        cursor: int = 0,
        *,
        user_id: str = "",
        filter: str = "",
        timeout: float | None = None,
    ) -> Sessions:
        """One page of sessions after ``cursor``, optionally only those of ``user_id``."""
        request = sessions_pb2.ListSessionsRequest(limit=limit, cursor=cursor, user_id=user_id, filter=filter)
        response = self._call(self._stub.ListSessions, request, timeout)
        return [session_from_proto(session) for session in response.sessions]

    def count(self, filter: str = "", *, timeout: float | None = None) -> int:
        """How many sessions match ``filter`` (every session when it is empty)."""
        request = sessions_pb2.CountSessionsRequest(filter=filter)
        response = self._call(self._stub.CountSessions, request, timeout)
        return int(response.count)


class MemstoreClient:
    """A connection to memstore. Use it as a context manager, or call ``close()``.

    ``timeout`` is the default deadline of every unary call, in seconds (each method
    takes ``timeout=`` to override it); ``api_key`` is sent as a bearer token; ``tls``
    is True for the system's trusted roots, or a ``grpc.ChannelCredentials``.
    """

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
            grpc.secure_channel(address, credentials, options=all_options)
            if credentials is not None
            else grpc.insecure_channel(address, options=all_options)
        )
        caller = _Caller(call_metadata(api_key), timeout)
        self.user = UserClient(self._channel, caller, resume or ResumePolicy())
        self.session = SessionClient(self._channel, caller)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MemstoreClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
