"""SessionService: request -> validated arguments -> store call (on a database thread) -> response."""

from __future__ import annotations

import functools
from typing import Any

from memstore.v1 import sessions_pb2, sessions_pb2_grpc

from memstore_server import responses
from memstore_server.blocking import Blocking
from memstore_server.filtering import SESSIONS
from memstore_server.store.sessions import SessionStore
from memstore_server.validation import RequestChecker

_UPDATABLE_SESSION_FIELDS = ("metadata",)


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(self, store: SessionStore, run: Blocking, *, max_message_bytes: int) -> None:
        self._store = store
        self._run = run
        self._max_message_bytes = max_message_bytes

    async def CreateSession(  # noqa: N802 - gRPC method names
        self, request: sessions_pb2.CreateSessionRequest, context: Any
    ) -> sessions_pb2.CreateSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        user_id = check.identifier("user_id", request.user_id, required=False)
        metadata = check.metadata("metadata", request.metadata)
        check.raise_if_any()
        session = await self._run(self._store.create, session_id, user_id, metadata)
        return sessions_pb2.CreateSessionResponse(session=session)

    async def GetSession(  # noqa: N802
        self, request: sessions_pb2.GetSessionRequest, context: Any
    ) -> sessions_pb2.GetSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        check.raise_if_any()
        return sessions_pb2.GetSessionResponse(session=await self._run(self._store.get, session_id))

    async def UpdateSession(  # noqa: N802
        self, request: sessions_pb2.UpdateSessionRequest, context: Any
    ) -> sessions_pb2.UpdateSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        metadata = check.metadata("metadata", request.metadata)
        replace = False
        if request.HasField("update_mask"):
            replace = "metadata" in check.update_mask(
                "update_mask", request.update_mask, _UPDATABLE_SESSION_FIELDS
            )
        check.raise_if_any()
        present = replace or request.HasField("metadata")
        update = functools.partial(self._store.update, replace=replace)
        session = await self._run(update, session_id, metadata if present else None)
        return sessions_pb2.UpdateSessionResponse(session=session)

    async def DeleteSession(  # noqa: N802
        self, request: sessions_pb2.DeleteSessionRequest, context: Any
    ) -> sessions_pb2.DeleteSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        check.raise_if_any()
        await self._run(self._store.delete, session_id)
        return sessions_pb2.DeleteSessionResponse()

    async def ListSessions(  # noqa: N802
        self, request: sessions_pb2.ListSessionsRequest, context: Any
    ) -> sessions_pb2.ListSessionsResponse:
        check = RequestChecker()
        limit = check.page_size("limit", request.limit)
        cursor = check.cursor("cursor", request.cursor)
        user_id = check.identifier("user_id", request.user_id, required=False)
        where = check.filter("filter", request.filter, SESSIONS)
        check.raise_if_any()
        page = await self._run(self._store.page, cursor, limit, user_id, where)
        return responses.sessions_page(page, self._max_message_bytes)

    async def CountSessions(  # noqa: N802
        self, request: sessions_pb2.CountSessionsRequest, context: Any
    ) -> sessions_pb2.CountSessionsResponse:
        check = RequestChecker()
        where = check.filter("filter", request.filter, SESSIONS)
        check.raise_if_any()
        return sessions_pb2.CountSessionsResponse(count=await self._run(self._store.count, where))
