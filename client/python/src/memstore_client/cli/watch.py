"""``memstore watch``: the change feed (WatchUsers) as JSON lines, resumed by itself when broken.

Every printed object carries a ``resume_token`` that is safe to checkpoint once
that line is handled: an event that is not the last of its server message carries
the token from before that message, so resuming from it sends those events again
(delivery is at least once) rather than skipping them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc
from memstore.v1 import users_pb2

from memstore_client._transport import ResumePolicy
from memstore_client.cli.connection import Connection, server_failure
from memstore_client.cli.exits import DATA_ERROR, TOKEN_EXPIRED, USAGE_ERROR, CommandError
from memstore_client.cli.records import Timestamps, encode, user_object
from memstore_client.errors import translate

# Seconds to wait for the first message of a stream, which the server sends at once.
FIRST_MESSAGE_TIMEOUT = 30.0
# A long-lived consumer rides out a server restart: about two and a half minutes of retries.
WATCH_RESUME = ResumePolicy(
    max_attempts=30,
    max_backoff=5.0,
    retryable=frozenset(
        {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.CANCELLED,
        }
    ),
)


def current_resume_token(connection: Connection) -> str | None:
    """The token of "now", from the first message of a WatchUsers stream (which comes at once).

    None, with a warning, when the server does not serve WatchUsers: the export is
    still complete, only not resumable with ``watch --since``.
    """
    stream = connection.users.WatchUsers(
        users_pb2.WatchUsersRequest(), metadata=connection.metadata, timeout=FIRST_MESSAGE_TIMEOUT
    )
    try:
        first = next(stream)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            print(
                "memstore: warning: this server has no WatchUsers: the manifest has no resume_token",
                file=sys.stderr,
            )
            return None
        raise server_failure(error, "WatchUsers (taking a resume token)") from None
    except StopIteration:
        raise CommandError("WatchUsers ended before its first message", DATA_ERROR) from None
    finally:
        stream.cancel()
    token: str = first.resume_token
    return token


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "watch",
        help="print every change to users as JSON lines, from now, a token, or a snapshot",
        description="Print one JSON object per line for every change to users (WatchUsers): "
        '{"type": "TYPE_CREATED"|"TYPE_UPDATED"|"TYPE_DELETED"|"TYPE_EXISTING", "sequence": N, '
        '"commit_time": RFC 3339, "user": {...as export writes it}, "resume_token": T}. '
        'With --initial, every existing user comes first, then {"initial_complete": true, '
        '"resume_token": T}. A broken connection is resumed from the last token received '
        "(a broken snapshot starts over). Without --since or --initial: changes from now on.",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--since", metavar="TOKEN", help="changes after this resume_token")
    start.add_argument(
        "--since-manifest",
        type=Path,
        metavar="PATH",
        help="changes after the resume_token of an export's manifest (PATH.manifest.json)",
    )
    start.add_argument(
        "--initial", action="store_true", help="every existing user first (TYPE_EXISTING), then the changes"
    )
    parser.add_argument(
        "--heartbeats",
        action="store_true",
        help='also print {"heartbeat": true, "resume_token": T} for the server\'s messages without events',
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="exit (0) after printing N events (default: run until stopped)"
    )
    return parser


def run(args: argparse.Namespace, connection: Connection) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1", USAGE_ERROR)
    token = args.since
    if args.since_manifest is not None:
        token = _manifest_token(args.since_manifest)
    printed = 0
    stamps = Timestamps()
    out = sys.stdout
    for message in messages(connection, token or "", send_initial=args.initial):
        printed += _print(message, out, stamps, heartbeats=args.heartbeats, limit=args.limit, printed=printed)
        out.flush()
        if args.limit is not None and printed >= args.limit:
            return 0
    return 0


def _manifest_token(path: Path) -> str:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CommandError(f"--since-manifest: cannot read {path}: {error}", USAGE_ERROR) from None
    token = manifest.get("resume_token") if isinstance(manifest, dict) else None
    if not isinstance(token, str) or not token:
        raise CommandError(f"--since-manifest: {path} holds no resume_token", USAGE_ERROR)
    return token


class _Message:
    """A WatchUsersResponse, with the tokens safe to resume from before and after its events.

    ``None`` where no token is safe: in the middle of a snapshot, whose tokens
    resume after it (the rest of it would be lost), so it can only start over.
    """

    def __init__(self, response: users_pb2.WatchUsersResponse, before: str | None, after: str | None) -> None:
        self.response = response
        self.before = before
        self.after = after


def messages(connection: Connection, token: str, *, send_initial: bool) -> Iterator[_Message]:
    """Every WatchUsers message, across reconnections, each with the token before it."""
    failures = 0
    snapshot_done = not send_initial
    while True:
        request = users_pb2.WatchUsersRequest(resume_token=token, send_initial=send_initial and not token)
        stream = connection.users.WatchUsers(request, metadata=connection.metadata)
        try:
            for response in stream:
                failures = 0
                snapshot_done = snapshot_done or response.initial_complete
                after = response.resume_token if snapshot_done else None
                yield _Message(response, token or None, after)
                token = after or token
            error_code = grpc.StatusCode.UNAVAILABLE  # the server ended the stream: resume
            error: grpc.RpcError | None = None
        except grpc.RpcError as failure:
            error, error_code = failure, failure.code()
        finally:
            stream.cancel()
        if error is not None:
            _give_up_on(error)
        failures += 1
        delay = WATCH_RESUME.delay(error_code, failures)
        if delay is None:
            assert error is not None
            raise server_failure(error, "WatchUsers") from None
        print(
            f"memstore: watch: stream broken ({error_code.name}); resuming "
            + ("from the last token" if token else "from the start")
            + f" in {delay:.1f}s",
            file=sys.stderr,
        )
        time.sleep(delay)


def _give_up_on(error: grpc.RpcError) -> None:
    """Errors no retry can mend: an expired or bad token, a refused call."""
    failure = translate(error)
    if failure.reason == "RESUME_TOKEN_EXPIRED":
        raise CommandError(
            f"WatchUsers: {failure.message} [RESUME_TOKEN_EXPIRED]: export again and watch from the new "
            "manifest (or watch --initial)",
            TOKEN_EXPIRED,
        )
    if failure.reason == "INVALID_RESUME_TOKEN":
        raise CommandError(f"--since: {failure.message} [INVALID_RESUME_TOKEN]", USAGE_ERROR)


def _print(
    message: _Message, out: TextIO, stamps: Timestamps, *, heartbeats: bool, limit: int | None, printed: int
) -> int:
    response = message.response
    events = response.events
    lines: list[str] = []
    last = len(events) - 1
    for index, event in enumerate(events):
        if limit is not None and printed + len(lines) >= limit:
            break
        token = message.after if index == last else message.before
        lines.append(encode(event_object(event, stamps, token)))
    count = len(lines)
    if response.initial_complete:
        lines.append(encode({"initial_complete": True, "resume_token": message.after}))
    elif not events and heartbeats and message.after:
        lines.append(encode({"heartbeat": True, "resume_token": message.after}))
    if lines:
        out.write("\n".join(lines) + "\n")
    return count


def event_object(event: users_pb2.UserEvent, stamps: Timestamps, token: str | None) -> dict[str, Any]:
    return {
        "type": users_pb2.UserEvent.Type.Name(event.type),
        "sequence": event.sequence,
        "commit_time": stamps.text(event.commit_time),
        "user": user_object(event.user, stamps),
        "resume_token": token,
    }
