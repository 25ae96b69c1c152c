"""The client's own types: what callers build and what they get back.

Requests accept plain dicts for metadata; results carry plain dicts and UTC
datetimes, with attributes named as in the proto, so callers never touch protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2
from memstore.v1 import sessions_pb2, users_pb2

JSONObject = dict[str, Any]


@dataclass(frozen=True)
class User:
    """A user as stored by memstore."""

    user_id: str
    email: str
    first_name: str
    last_name: str
    metadata: JSONObject
    uuid: str
    id: int
    created_at: datetime
    updated_at: datetime
    session_count: int


@dataclass(frozen=True)
class Session:
    """A session as stored by memstore; ``user_id`` is "" for a session of no user."""

    session_id: str
    user_id: str
    metadata: JSONObject
    uuid: str
    id: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class UserEvent:
    """One event of a user watch: ``type`` is EXISTING (in the initial snapshot), CREATED,
    UPDATED or DELETED; ``user`` is the user after the change (for DELETED, as it was last,
    with at least ``user_id``, ``uuid`` and ``id``)."""

    type: str
    user: User
    sequence: int
    commit_time: datetime


@dataclass(frozen=True)
class WatchUsersResponse:
    """One message of a user watch.

    ``resume_token`` marks the point after its events: keep the last one and pass it to
    ``watch`` to go on from there. ``initial_complete`` is true on the message after the
    snapshot's last user. ``snapshot_restarted`` is true on the first message of a snapshot
    taken again after the stream broke during the first one: discard what the broken
    snapshot gave (users deleted meanwhile would not be listed again).
    """

    events: list[UserEvent]
    resume_token: str
    initial_complete: bool = False
    snapshot_restarted: bool = False


@dataclass(frozen=True)
class CreateUserRequest:
    user_id: str
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class UpdateUserRequest:
    """What to change. ``None`` leaves a field as stored; ``""`` clears it.

    ``metadata`` is deep-merged into the stored object (a ``None`` value inside it
    removes that key); with ``update_mask``, exactly the named fields are replaced.
    """

    user_id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    metadata: Mapping[str, Any] | None = None
    update_mask: Sequence[str] | None = None


@dataclass(frozen=True)
class CreateSessionRequest:
    session_id: str
    user_id: str = ""
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class UpdateSessionRequest:
    """``metadata`` is deep-merged; with ``update_mask=["metadata"]`` it replaces the stored object."""

    session_id: str
    metadata: Mapping[str, Any] | None = None
    update_mask: Sequence[str] | None = field(default=None)


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    result = struct_pb2.Struct()
    result.update(value)
    return result


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=timezone.utc)


# Every integer of at most this size is exactly one double, so it survives the trip as one.
_LARGEST_EXACT_INTEGER = 2**53


def _integral(value: Any) -> Any:
    """``value`` with whole-number doubles within +-2**53 as ints, at every depth.

    google.protobuf.Struct carries every number as a double, so {"n": 5} would
    otherwise read back as {"n": 5.0}.
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _LARGEST_EXACT_INTEGER else value
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _json(struct: struct_pb2.Struct) -> JSONObject:
    value: JSONObject = _integral(json_format.MessageToDict(struct))
    return value


def user_from_proto(message: users_pb2.User) -> User:
    return User(
        user_id=message.user_id,
        email=message.email,
        first_name=message.first_name,
        last_name=message.last_name,
        metadata=_json(message.metadata),
        uuid=message.uuid,
        id=message.id,
        created_at=_datetime(message.created_at),
        updated_at=_datetime(message.updated_at),
        session_count=message.session_count,
    )


def session_from_proto(message: sessions_pb2.Session) -> Session:
    return Session(
        session_id=message.session_id,
        user_id=message.user_id,
        metadata=_json(message.metadata),
        uuid=message.uuid,
        id=message.id,
        created_at=_datetime(message.created_at),
        updated_at=_datetime(message.updated_at),
    )


def create_user_proto(request: CreateUserRequest) -> users_pb2.CreateUserRequest:
    return users_pb2.CreateUserRequest(
        user_id=request.user_id,
        email=request.email,
        first_name=request.first_name,
        last_name=request.last_name,
        metadata=_struct(request.metadata),
    )


def update_user_proto(request: UpdateUserRequest) -> users_pb2.UpdateUserRequest:
    return users_pb2.UpdateUserRequest(
        user_id=request.user_id,
        email=request.email,
        first_name=request.first_name,
        last_name=request.last_name,
        metadata=_struct(request.metadata),
        update_mask=_mask(request.update_mask),
    )


def create_session_proto(request: CreateSessionRequest) -> sessions_pb2.CreateSessionRequest:
    return sessions_pb2.CreateSessionRequest(
        session_id=request.session_id, user_id=request.user_id, metadata=_struct(request.metadata)
    )


def update_session_proto(request: UpdateSessionRequest) -> sessions_pb2.UpdateSessionRequest:
    return sessions_pb2.UpdateSessionRequest(
        session_id=request.session_id,
        metadata=_struct(request.metadata),
        update_mask=_mask(request.update_mask),
    )


def _mask(paths: Sequence[str] | None) -> field_mask_pb2.FieldMask | None:
    return None if paths is None else field_mask_pb2.FieldMask(paths=list(paths))


def _event_type(value: int) -> str:
    name: str = users_pb2.UserEvent.Type.Name(value)
    return name.removeprefix("TYPE_")


def watch_response_from_proto(
    message: users_pb2.WatchUsersResponse, *, snapshot_restarted: bool = False
) -> WatchUsersResponse:
    return WatchUsersResponse(
        events=[
            UserEvent(
                type=_event_type(event.type),
                user=user_from_proto(event.user),
                sequence=event.sequence,
                commit_time=_datetime(event.commit_time),
            )
            for event in message.events
        ],
        resume_token=message.resume_token,
        initial_complete=message.initial_complete,
        snapshot_restarted=snapshot_restarted,
    )
