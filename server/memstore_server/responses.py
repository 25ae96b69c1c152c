"""Responses framed around stored users, and streams split to fit the message size limit.

The store hands out each user as its stored serialized ``memstore.v1.User``
(see store/user_messages.py). A response holding users is framed around those
bytes without parsing them: each public response that holds users has a
private twin here, the same message with ``bytes`` where it has ``User``
(``repeated bytes users = 1`` in place of ``repeated User users = 1``). Both
encode a field as its tag, its length and its bytes, so the twin serializes to
exactly the public message's bytes, and protobuf's C code does the framing.
The twins are built from the public descriptors at import, so their field
numbers cannot drift from the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from memstore.v1 import sessions_pb2, users_pb2

from memstore_server.store.pages import Page
from memstore_server.store.users import FramedUsers, KeysetPage

_USER = users_pb2.User.DESCRIPTOR.full_name
_PRIVATE_POOL = descriptor_pool.DescriptorPool()
_INTEGER_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32)


def _bytes_twin(message: type[Message]) -> type[Message]:
    """A message class encoding like ``message``, with every ``User`` field taking serialized bytes."""
    # The stubs type DESCRIPTOR as either implementation's class; both have this interface.
    public = cast(Descriptor, message.DESCRIPTOR)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"memstore/internal/{public.name}.proto", package="memstore.internal", syntax="proto3"
    )
    twin = file.message_type.add(name=public.name)
    for field in public.fields:
        is_user = field.message_type is not None and field.message_type.full_name == _USER
        if not is_user and field.type not in _INTEGER_TYPES:
            raise TypeError(f"{public.full_name}.{field.name}: only User and integer fields have a twin")
        twin.field.add(
            name=field.name,
            number=field.number,
            type=FieldDescriptor.TYPE_BYTES if is_user else field.type,
            label=(
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if field.is_repeated
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            ),
        )
    _PRIVATE_POOL.Add(file)
    return message_factory.GetMessageClass(
        _PRIVATE_POOL.FindMessageTypeByName(f"memstore.internal.{public.name}")
    )


_CREATE_USER = _bytes_twin(users_pb2.CreateUserResponse)
_GET_USER = _bytes_twin(users_pb2.GetUserResponse)
_UPDATE_USER = _bytes_twin(users_pb2.UpdateUserResponse)
_LIST_USERS = _bytes_twin(users_pb2.ListUsersResponse)
_LIST_USERS_CHUNKED = _bytes_twin(users_pb2.ListUsersChunkedResponse)
_BATCH_CREATE_USERS = _bytes_twin(users_pb2.BatchCreateUsersResponse)
_BATCH_USERS_FIELD = users_pb2.BatchCreateUsersResponse.DESCRIPTOR.fields_by_name["users"].number
_USERS_FIELD = users_pb2.ListUsersChunkedResponse.DESCRIPTOR.fields_by_name["users"].number
_LIST_SESSIONS_FIELD = sessions_pb2.ListSessionsResponse.DESCRIPTOR.fields_by_name["sessions"].number
_USER_SESSIONS_FIELD = users_pb2.GetUserSessionsResponse.DESCRIPTOR.fields_by_name["sessions"].number
# The tag of ListUsersChunkedResponse.users on the wire (field number, wire type 2), for
# stream pages that PostgreSQL frames (store.users.FramedUsers); one byte below field 16.
CHUNK_USERS_TAG = bytes([(_USERS_FIELD << 3) | 2])
# Room kept in every page and streamed message for its next_cursor field: its tag and a 10-byte varint.
_NEXT_CURSOR_ROOM = 11


def created_user(user: bytes) -> bytes:
    """A serialized CreateUserResponse holding the serialized ``user``."""
    return _CREATE_USER(user=user).SerializeToString()


def got_user(user: bytes) -> bytes:
    """A serialized GetUserResponse holding the serialized ``user``."""
    return _GET_USER(user=user).SerializeToString()


def updated_user(user: bytes) -> bytes:
    """A serialized UpdateUserResponse holding the serialized ``user``."""
    return _UPDATE_USER(user=user).SerializeToString()


def batch_created_users(users: Sequence[bytes]) -> bytes:
    """A serialized BatchCreateUsersResponse holding the serialized ``users``."""
    return _BATCH_CREATE_USERS(users=users).SerializeToString()


def batch_created_size(users: Sequence[bytes]) -> int:
    """Bytes of batch_created_users(users), without building it."""
    return sum(_field_size(_BATCH_USERS_FIELD, len(user)) for user in users)


def users_page(page: Page[bytes], max_bytes: int) -> bytes:
    """A serialized ListUsersResponse of at most ``max_bytes``: fewer users than asked
    for when they would not fit, with the cursor continuing after the last one sent."""
    fitted = page.within(
        [_field_size(_USERS_FIELD, len(user)) for user in page.items], max_bytes - _NEXT_CURSOR_ROOM
    )
    return _LIST_USERS(users=fitted.items, next_cursor=fitted.next_cursor).SerializeToString()


def _sessions_within(
    page: Page[sessions_pb2.Session], field: int, max_bytes: int
) -> Page[sessions_pb2.Session]:
    sizes = [_field_size(field, session.ByteSize()) for session in page.items]
    return page.within(sizes, max_bytes - _NEXT_CURSOR_ROOM)


def sessions_page(page: Page[sessions_pb2.Session], max_bytes: int) -> sessions_pb2.ListSessionsResponse:
    """A ListSessionsResponse of at most ``max_bytes`` (see users_page)."""
    fitted = _sessions_within(page, _LIST_SESSIONS_FIELD, max_bytes)
    return sessions_pb2.ListSessionsResponse(sessions=fitted.items, next_cursor=fitted.next_cursor)


def user_sessions_page(page: Page[sessions_pb2.Session], max_bytes: int) -> users_pb2.GetUserSessionsResponse:
    """A GetUserSessionsResponse of at most ``max_bytes`` (see users_page)."""
    fitted = _sessions_within(page, _USER_SESSIONS_FIELD, max_bytes)
    return users_pb2.GetUserSessionsResponse(sessions=fitted.items, next_cursor=fitted.next_cursor)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_size(number: int, length: int) -> int:
    """Bytes a length-delimited field ``number`` of ``length`` bytes takes: tag, length, payload."""
    return _varint_size(number << 3) + _varint_size(length) + length


def split(users: Sequence[bytes], max_bytes: int) -> list[tuple[int, int]]:
    """How to cut ``users`` into ListUsersChunkedResponses of at most ``max_bytes`` each:
    the (start, end) index range of each; every range holds at least one user."""
    budget = max_bytes - _NEXT_CURSOR_ROOM
    ranges, start, used = [], 0, 0
    for index, user in enumerate(users):
        size = _field_size(_USERS_FIELD, len(user))
        if index > start and used + size > budget:
            ranges.append((start, index))
            start, used = index, 0
        used += size
    ranges.append((start, len(users)))
    return ranges


def fits(page: FramedUsers, max_bytes: int) -> bool:
    """Whether ``page`` is whole and goes out as one ListUsersChunkedResponse of at most ``max_bytes``."""
    return page.complete and len(page.frames) <= max_bytes - _NEXT_CURSOR_ROOM


def framed_chunk(frames: bytes, next_cursor: int) -> bytes:
    """A serialized ListUsersChunkedResponse of users already framed with CHUNK_USERS_TAG.

    A message's serialized fields may come in any order, so the frames are followed
    by the serialized next_cursor, as protobuf itself would merge them."""
    return frames + _LIST_USERS_CHUNKED(next_cursor=next_cursor).SerializeToString()


def chunks_of(users: KeysetPage, max_bytes: int) -> list[tuple[bytes, int, int]]:
    """``users`` cut into framed pieces that each fit one ListUsersChunkedResponse of at most
    ``max_bytes``: (frames, how many users, id of the last) for each, in order."""
    # The users alone (next_cursor 0 is left out of the wire) are the frames framed_chunk takes.
    return [
        (
            _LIST_USERS_CHUNKED(users=users.users[start:end]).SerializeToString(),
            end - start,
            users.ids[end - 1],
        )
        for start, end in split(users.users, max_bytes)
    ]


# ---------------------------------------------------------------- WatchUsers

_EVENTS_FIELD = users_pb2.WatchUsersResponse.DESCRIPTOR.fields_by_name["events"].number
_EVENT_USER_FIELD = users_pb2.UserEvent.DESCRIPTOR.fields_by_name["user"].number
_TOKEN_FIELD = users_pb2.WatchUsersResponse.DESCRIPTOR.fields_by_name["resume_token"].number
_COMPLETE_FIELD = users_pb2.WatchUsersResponse.DESCRIPTOR.fields_by_name["initial_complete"].number
# Events per WatchUsersResponse at most (the contract's limit).
MAX_EVENTS_PER_MESSAGE = 1000


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def user_event(kind: int, sequence: int, commit_micros: int, user: bytes) -> bytes:
    """A serialized UserEvent around the stored ``user`` bytes (fields may come in any order)."""
    head = users_pb2.UserEvent(type=kind, sequence=sequence)  # type: ignore[arg-type]
    head.commit_time.FromMicroseconds(commit_micros)
    return head.SerializeToString() + _length_delimited(_EVENT_USER_FIELD, user)


def watch_cuts(events: Sequence[bytes], token_chars: int, max_bytes: int) -> list[tuple[int, int]]:
    """How to cut ``events`` into WatchUsersResponses of at most MAX_EVENTS_PER_MESSAGE events
    and ``max_bytes`` (room kept for a token of ``token_chars`` and initial_complete): the
    (start, end) index range of each; every range holds at least one event."""
    budget = max_bytes - _field_size(_TOKEN_FIELD, token_chars) - 2
    ranges, start, used = [], 0, 0
    for index, event in enumerate(events):
        size = _field_size(_EVENTS_FIELD, len(event))
        if index > start and (used + size > budget or index - start >= MAX_EVENTS_PER_MESSAGE):
            ranges.append((start, index))
            start, used = index, 0
        used += size
    if events:
        ranges.append((start, len(events)))
    return ranges


def watch_message(events: Sequence[bytes], resume_token: str, *, initial_complete: bool = False) -> bytes:
    """A serialized WatchUsersResponse of serialized events."""
    parts = [_length_delimited(_EVENTS_FIELD, event) for event in events]
    parts.append(_length_delimited(_TOKEN_FIELD, resume_token.encode()))
    if initial_complete:
        parts.append(_varint(_COMPLETE_FIELD << 3) + b"\x01")
    return b"".join(parts)


# ---------------------------------------------------------------- ExportUsers

_JSON_LINES_FIELD = users_pb2.ExportUsersResponse.DESCRIPTOR.fields_by_name["json_lines"].number


def export_lines_fit(length: int, max_bytes: int) -> bool:
    """Whether ``length`` bytes of JSON lines go out as one ExportUsersResponse of at most ``max_bytes``."""
    return _field_size(_JSON_LINES_FIELD, length) + _NEXT_CURSOR_ROOM <= max_bytes


def exported_lines(lines: bytes, next_cursor: int) -> bytes:
    """A serialized ExportUsersResponse of JSON lines that are UTF-8 already (PostgreSQL built them)."""
    return b"".join(  # the lines copied once
        (
            _varint((_JSON_LINES_FIELD << 3) | 2),
            _varint(len(lines)),
            lines,
            users_pb2.ExportUsersResponse(next_cursor=next_cursor).SerializeToString(),
        )
    )
