"""SessionService: translates requests into store calls and results into responses."""

from __future__ import annotations

import grpc
from memstore.v1 import sessions_pb2, sessions_pb2_grpc

from memstore_server.store.sessions import SessionStore
from memstore_server.validation import RequestChecker

_UPDATABLE_SESSION_FIELDS = ("metadata",)


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(self, store: SessionStore) -> None:
        self._store = store

    def CreateSession(  # noqa: N802 - gRPC method names
        self, request: sessions_pb2.CreateSessionRequest, context: grpc.ServicerContext
    ) -> sessions_pb2.CreateSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        user_id = check.identifier("user_id", request.user_id, required=False)
        metadata = check.metadata("metadata", request.metadata)
        check.raise_if_any()
        return sessions_pb2.CreateSessionResponse(session=self._store.create(session_id, user_id, metadata))

    def GetSession(  # noqa: N802
        self, request: sessions_pb2.GetSessionRequest, context: grpc.ServicerContext
    ) -> sessions_pb2.GetSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        check.raise_if_any()
        return sessions_pb2.GetSessionResponse(session=self._store.get(session_id))

    def UpdateSession(  # noqa: N802
        self, request: sessions_pb2.UpdateSessionRequest, context: grpc.ServicerContext
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
        session = self._store.update(session_id, metadata if present else None, replace=replace)
        return sessions_pb2.UpdateSessionResponse(session=session)

    def DeleteSession(  # noqa: N802
        self, request: sessions_pb2.DeleteSessionRequest, context: grpc.ServicerContext
    ) -> sessions_pb2.DeleteSessionResponse:
        check = RequestChecker()
        session_id = check.identifier("session_id", request.session_id)
        check.raise_if_any()
        self._store.delete(session_id)
        return sessions_pb2.DeleteSessionResponse()

    def ListSessions(  # noqa: N802
        self, request: sessions_pb2.ListSessionsRequest, context: grpc.ServicerContext
    ) -> sessions_pb2.ListSessionsResponse:
        check = RequestChecker()
        limit = check.page_size("limit", request.limit)
        cursor = check.cursor("cursor", request.cursor)
        user_id = check.identifier("user_id", request.user_id, required=False)
        check.raise_if_any()
        return self._store.page(cursor, limit, user_id)
