import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from memstore.v1 import sessions_pb2 as _sessions_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class User(_message.Message):
    __slots__ = ("user_id", "email", "first_name", "last_name", "metadata", "uuid", "id", "created_at", "updated_at", "session_count")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    email: str
    first_name: str
    last_name: str
    metadata: _struct_pb2.Struct
    uuid: str
    id: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    session_count: int
    def __init__(self, user_id: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., uuid: _Optional[str] = ..., id: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_count: _Optional[int] = ...) -> None: ...

class CreateUserRequest(_message.Message):
    __slots__ = ("user_id", "email", "first_name", "last_name", "metadata")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    email: str
    first_name: str
    last_name: str
    metadata: _struct_pb2.Struct
    def __init__(self, user_id: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class UpdateUserRequest(_message.Message):
    __slots__ = ("user_id", "email", "first_name", "last_name", "metadata", "update_mask")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    email: str
    first_name: str
    last_name: str
    metadata: _struct_pb2.Struct
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, user_id: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ("limit", "cursor", "filter")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    cursor: int
    filter: str
    def __init__(self, limit: _Optional[int] = ..., cursor: _Optional[int] = ..., filter: _Optional[str] = ...) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users", "next_cursor")
    USERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    next_cursor: int
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ..., next_cursor: _Optional[int] = ...) -> None: ...

class ListUsersChunkedRequest(_message.Message):
    __slots__ = ("chunk_size", "cursor", "filter")
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    chunk_size: int
    cursor: int
    filter: str
    def __init__(self, chunk_size: _Optional[int] = ..., cursor: _Optional[int] = ..., filter: _Optional[str] = ...) -> None: ...

class ListUsersChunkedResponse(_message.Message):
    __slots__ = ("users", "next_cursor")
    USERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    next_cursor: int
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ..., next_cursor: _Optional[int] = ...) -> None: ...

class ExportUsersRequest(_message.Message):
    __slots__ = ("cursor", "filter")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    filter: str
    def __init__(self, cursor: _Optional[int] = ..., filter: _Optional[str] = ...) -> None: ...

class ExportUsersResponse(_message.Message):
    __slots__ = ("json_lines", "next_cursor")
    JSON_LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    json_lines: str
    next_cursor: int
    def __init__(self, json_lines: _Optional[str] = ..., next_cursor: _Optional[int] = ...) -> None: ...

class GetUserSessionsRequest(_message.Message):
    __slots__ = ("user_id", "limit", "cursor")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    cursor: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[int] = ...) -> None: ...

class GetUserSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_cursor")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[_sessions_pb2.Session]
    next_cursor: int
    def __init__(self, sessions: _Optional[_Iterable[_Union[_sessions_pb2.Session, _Mapping]]] = ..., next_cursor: _Optional[int] = ...) -> None: ...

class BatchCreateUsersRequest(_message.Message):
    __slots__ = ("requests", "skip_existing")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SKIP_EXISTING_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CreateUserRequest]
    skip_existing: bool
    def __init__(self, requests: _Optional[_Iterable[_Union[CreateUserRequest, _Mapping]]] = ..., skip_existing: _Optional[bool] = ...) -> None: ...

class BatchCreateUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class CountUsersRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: str
    def __init__(self, filter: _Optional[str] = ...) -> None: ...

class CountUsersResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class WatchUsersRequest(_message.Message):
    __slots__ = ("resume_token", "send_initial")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SEND_INITIAL_FIELD_NUMBER: _ClassVar[int]
    resume_token: str
    send_initial: bool
    def __init__(self, resume_token: _Optional[str] = ..., send_initial: _Optional[bool] = ...) -> None: ...

class WatchUsersResponse(_message.Message):
    __slots__ = ("events", "resume_token", "initial_complete")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INITIAL_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[UserEvent]
    resume_token: str
    initial_complete: bool
    def __init__(self, events: _Optional[_Iterable[_Union[UserEvent, _Mapping]]] = ..., resume_token: _Optional[str] = ..., initial_complete: _Optional[bool] = ...) -> None: ...

class UserEvent(_message.Message):
    __slots__ = ("type", "user", "sequence", "commit_time")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[UserEvent.Type]
        TYPE_EXISTING: _ClassVar[UserEvent.Type]
        TYPE_CREATED: _ClassVar[UserEvent.Type]
        TYPE_UPDATED: _ClassVar[UserEvent.Type]
        TYPE_DELETED: _ClassVar[UserEvent.Type]
    TYPE_UNSPECIFIED: UserEvent.Type
    TYPE_EXISTING: UserEvent.Type
    TYPE_CREATED: UserEvent.Type
    TYPE_UPDATED: UserEvent.Type
    TYPE_DELETED: UserEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    type: UserEvent.Type
    user: User
    sequence: int
    commit_time: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[_Union[UserEvent.Type, str]] = ..., user: _Optional[_Union[User, _Mapping]] = ..., sequence: _Optional[int] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchUsersResumeToken(_message.Message):
    __slots__ = ("feed_id", "seen", "window", "after_sequence")
    class Snapshot(_message.Message):
        __slots__ = ("xmin", "xmax", "xip")
        XMIN_FIELD_NUMBER: _ClassVar[int]
        XMAX_FIELD_NUMBER: _ClassVar[int]
        XIP_FIELD_NUMBER: _ClassVar[int]
        xmin: int
        xmax: int
        xip: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, xmin: _Optional[int] = ..., xmax: _Optional[int] = ..., xip: _Optional[_Iterable[int]] = ...) -> None: ...
    FEED_ID_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    feed_id: str
    seen: WatchUsersResumeToken.Snapshot
    window: WatchUsersResumeToken.Snapshot
    after_sequence: int
    def __init__(self, feed_id: _Optional[str] = ..., seen: _Optional[_Union[WatchUsersResumeToken.Snapshot, _Mapping]] = ..., window: _Optional[_Union[WatchUsersResumeToken.Snapshot, _Mapping]] = ..., after_sequence: _Optional[int] = ...) -> None: ...
