"""WatchUsers resume tokens: a feed Position as an opaque string (AIP-158), and back.

A token is base64url (no padding) of a serialized ``WatchUsersResumeToken``. Every
way a token can be wrong (not base64url, not the message, another database's feed,
a snapshot PostgreSQL would refuse, a position that cannot follow) is the one
INVALID_ARGUMENT (reason INVALID_RESUME_TOKEN), never a database error.
"""

from __future__ import annotations

import base64
import binascii

from google.protobuf.message import DecodeError
from memstore.v1 import users_pb2

from memstore_server.errors import FieldViolation, InvalidArgument
from memstore_server.store.changes import Position, Snapshot

_FIELD = "resume_token"
# Far above any real token (a snapshot lists the transactions running when it was taken).
MAX_TOKEN_CHARS = 64 * 1024


def invalid(why: str) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation(_FIELD, f"{why}; pass a resume_token from a WatchUsers response of this server")],
        reason="INVALID_RESUME_TOKEN",
    )


def _snapshot_message(snapshot: Snapshot) -> users_pb2.WatchUsersResumeToken.Snapshot:
    return users_pb2.WatchUsersResumeToken.Snapshot(
        xmin=snapshot.xmin, xmax=snapshot.xmax, xip=list(snapshot.xip)
    )


def _snapshot(message: users_pb2.WatchUsersResumeToken.Snapshot) -> Snapshot:
    snapshot = Snapshot(message.xmin, message.xmax, tuple(message.xip))
    if not snapshot.is_well_formed():
        raise invalid("not a token (its snapshot is malformed)")
    return snapshot


def encode(feed_id: str, position: Position) -> str:
    """The token of ``position`` in the feed ``feed_id``."""
    token = users_pb2.WatchUsersResumeToken(feed_id=feed_id, seen=_snapshot_message(position.seen))
    if position.window is not None:
        token.window.CopyFrom(_snapshot_message(position.window))
        token.after_sequence = position.after_sequence
    return base64.urlsafe_b64encode(token.SerializeToString(deterministic=True)).rstrip(b"=").decode()


def decode(feed_id: str, text: str) -> Position:
    """The position a token of the feed ``feed_id`` marks; InvalidArgument when it is not one."""
    if len(text) > MAX_TOKEN_CHARS:
        raise invalid("not a token (too long)")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        token = users_pb2.WatchUsersResumeToken.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        raise invalid("not a token (not base64url of one)") from None
    if not token.feed_id or not token.HasField("seen"):
        raise invalid("not a token (fields are missing)")
    if token.feed_id != feed_id:
        raise invalid("a token of another memstore database")
    seen = _snapshot(token.seen)
    if not token.HasField("window"):
        if token.after_sequence:
            raise invalid("not a token (a sequence without its window)")
        return Position(seen)
    window = _snapshot(token.window)
    if not window.not_before(seen) or token.after_sequence < 0:
        raise invalid("not a token (its window precedes it)")
    return Position(seen, window, token.after_sequence)


def is_from_the_future(position: Position, now: Snapshot) -> bool:
    """Whether ``position`` marks transactions that have not started yet: not a token of this
    database as it is (restored from an older backup, or made up)."""
    latest = position.window or position.seen
    return latest.xmax > now.xmax
