"""UserService: translates requests into store calls and results into responses.

Users come back from the store already serialized, so the responses that carry
them are framed as bytes here (see wire.py); app.py sends bytes as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from memstore.v1 import users_pb2, users_pb2_grpc

from memstore_server import metrics, wire
from memstore_server.store.users import UserChanges, UserStore
from memstore_server.validation import RequestChecker

_UPDATABLE_USER_FIELDS = ("email", "first_name", "last_name", "metadata")
# Field 1 is `user` in CreateUserResponse, GetUserResponse and UpdateUserResponse alike.
_USER_FIELD = 1


def _with_user(user: bytes) -> bytes:
    """A serialized Create/Get/UpdateUserResponse holding the serialized ``user``."""
    return wire.length_delimited(_USER_FIELD, user)


class UserServicer(users_pb2_grpc.UserServiceServicer):
    def __init__(self, store: UserStore) -> None:
        self._store = store

    def CreateUser(  # noqa: N802 - gRPC method names
        self, request: users_pb2.CreateUserRequest, context: grpc.ServicerContext
    ) -> bytes:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        email = check.email("email", request.email)
        first_name = check.name("first_name", request.first_name)
        last_name = check.name("last_name", request.last_name)
        metadata = check.metadata("metadata", request.metadata)
        check.raise_if_any()
        return _with_user(self._store.create(user_id, email, first_name, last_name, metadata))

    def GetUser(  # noqa: N802
        self, request: users_pb2.GetUserRequest, context: grpc.ServicerContext
    ) -> bytes:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        check.raise_if_any()
        return _with_user(self._store.get(user_id))

    def UpdateUser(  # noqa: N802
        self, request: users_pb2.UpdateUserRequest, context: grpc.ServicerContext
    ) -> bytes:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        email = check.email("email", request.email)
        first_name = check.name("first_name", request.first_name)
        last_name = check.name("last_name", request.last_name)
        metadata = check.metadata("metadata", request.metadata)
        if request.HasField("update_mask"):
            masked = check.update_mask("update_mask", request.update_mask, _UPDATABLE_USER_FIELDS)
            changes = UserChanges(
                email=email if "email" in masked else None,
                first_name=first_name if "first_name" in masked else None,
                last_name=last_name if "last_name" in masked else None,
                metadata=metadata if "metadata" in masked else None,
                replace_metadata=True,
            )
        else:
            changes = UserChanges(
                email=email if request.HasField("email") else None,
                first_name=first_name if request.HasField("first_name") else None,
                last_name=last_name if request.HasField("last_name") else None,
                metadata=metadata if request.HasField("metadata") else None,
            )
        check.raise_if_any()
        return _with_user(self._store.update(user_id, changes))

    def DeleteUser(  # noqa: N802
        self, request: users_pb2.DeleteUserRequest, context: grpc.ServicerContext
    ) -> users_pb2.DeleteUserResponse:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        check.raise_if_any()
        self._store.delete(user_id)
        return users_pb2.DeleteUserResponse()

    def ListUsers(  # noqa: N802
        self, request: users_pb2.ListUsersRequest, context: grpc.ServicerContext
    ) -> bytes:
        check = RequestChecker()
        limit = check.page_size("limit", request.limit)
        cursor = check.cursor("cursor", request.cursor)
        check.raise_if_any()
        return self._store.page(cursor, limit)  # a serialized ListUsersResponse

    def ListUsersChunked(  # noqa: N802
        self, request: users_pb2.ListUsersChunkedRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        check = RequestChecker()
        chunk_size = check.page_size("chunk_size", request.chunk_size)
        cursor = check.cursor("cursor", request.cursor)
        check.raise_if_any()
        for chunk in self._store.chunks(cursor, chunk_size):
            if not context.is_active():  # cancelled or past its deadline: stop querying
                return
            yield chunk.payload
            metrics.USERS_STREAMED.inc(chunk.users)

    def GetUserSessions(  # noqa: N802
        self, request: users_pb2.GetUserSessionsRequest, context: grpc.ServicerContext
    ) -> users_pb2.GetUserSessionsResponse:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        limit = check.page_size("limit", request.limit)
        cursor = check.cursor("cursor", request.cursor)
        check.raise_if_any()
        return self._store.sessions(user_id, cursor, limit)
