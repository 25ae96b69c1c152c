"""Where a user watch resumes after a broken stream: shared by the sync and async clients.

After the initial snapshot (or without one), a broken stream is resumed from the last
token received: nothing is missed, and what came after it may come again. A token
taken during the snapshot would resume after the snapshot, skipping the users not
listed yet, so a stream broken there takes the snapshot again from the start, and its
first message says so (``snapshot_restarted``).
"""

from __future__ import annotations

from memstore.v1 import users_pb2

from memstore_client.models import WatchUsersResponse, watch_response_from_proto


class WatchCursor:
    """What to ask for next, from what has been received."""

    def __init__(self, resume_token: str, send_initial: bool) -> None:
        self._token = resume_token
        self._in_snapshot = send_initial and not resume_token
        self._snapshot_started = False
        self._restarting = False

    def request(self) -> users_pb2.WatchUsersRequest:
        if self._in_snapshot:
            self._restarting = self._snapshot_started
            return users_pb2.WatchUsersRequest(send_initial=True)
        return users_pb2.WatchUsersRequest(resume_token=self._token)

    def received(self, message: users_pb2.WatchUsersResponse) -> WatchUsersResponse:
        restarted = self._restarting
        self._restarting = False
        if self._in_snapshot:
            self._snapshot_started = True
            if message.initial_complete:
                self._in_snapshot = False
        if message.resume_token:
            self._token = message.resume_token
        return watch_response_from_proto(message, snapshot_restarted=restarted)
