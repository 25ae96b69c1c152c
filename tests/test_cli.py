"""The memstore command, run as a user runs it (a subprocess) against a real server and PostgreSQL.

export then import gives the same users; Parquet reads back typed in pyarrow;
manifests hold the file's sha256 and a resume token; invalid lines stop an import
at their number and field; exit codes; --skip-existing; watch from a manifest.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import signal
import socket
import struct as struct_module
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import peewee
import pytest
from google.protobuf import json_format
from hypothesis import assume, given
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_client.cli import exits
from memstore_client.cli.records import RecordError, create_request
from memstore_server.config import Settings

from tests.support import (
    EXPORTED_FIELDS,
    TIMEOUT,
    RunningServer,
    ServerAddress,
    bulk_users,
    free_port,
    json_values,
    rfc3339,
    server_environment,
    struct,
    unique,
    wait_for,
)

MEMSTORE = Path(sys.executable).parent / "memstore"
# A command that does its work and exits; generous for a loaded 2-core machine.
COMMAND_TIMEOUT = 120.0
IMPORTED_FIELDS = ("user_id", "email", "first_name", "last_name", "metadata")


def memstore(
    *args: str | Path, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``memstore ARGS`` as a user would run it, with no MEMSTORE_* variable unless given."""
    environment = server_environment()
    environment.update(env or {})
    return subprocess.run(
        [str(MEMSTORE), *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=COMMAND_TIMEOUT,
        check=False,
        env=environment,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"
    return result


def create(users: users_pb2_grpc.UserServiceStub, user_id: str, **fields: Any) -> users_pb2.User:
    if "metadata" in fields:
        fields["metadata"] = struct(fields["metadata"])
    response: users_pb2.CreateUserResponse = users.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id, **fields), timeout=TIMEOUT
    )
    return response.user


def all_users(users: users_pb2_grpc.UserServiceStub) -> list[users_pb2.User]:
    found: list[users_pb2.User] = []
    cursor = 0
    while True:
        page: users_pb2.ListUsersResponse = users.ListUsers(
            users_pb2.ListUsersRequest(limit=1000, cursor=cursor), timeout=TIMEOUT
        )
        found.extend(page.users)
        if page.next_cursor == 0:
            return found
        cursor = page.next_cursor


def as_json(user: users_pb2.User) -> dict[str, Any]:
    """A stored user as the API's JSON (int64 as numbers), for comparisons."""
    value = json_format.MessageToDict(user, preserving_proto_field_name=True)
    value["id"] = int(value.get("id", 0))
    value["session_count"] = int(value.get("session_count", 0))
    for name in ("email", "first_name", "last_name"):
        value.setdefault(name, "")
    value.setdefault("metadata", {})
    return value


def with_times(user: Mapping[str, Any]) -> dict[str, Any]:
    """The user with its timestamps as datetimes: RFC 3339 text may give 3 or 6 decimals for one time."""
    return {**user, "created_at": rfc3339(user["created_at"]), "updated_at": rfc3339(user["updated_at"])}


def imported_fields(user: Mapping[str, Any]) -> dict[str, Any]:
    return {name: user.get(name) for name in IMPORTED_FIELDS}


def sample_users(users: users_pb2_grpc.UserServiceStub, count: int = 25) -> list[users_pb2.User]:
    """Users with every kind of field: unicode, quotes and newlines in names, nested metadata."""
    prefix = unique("cli")
    made = []
    for n in range(count):
        made.append(
            create(
                users,
                f"{prefix}-{n:03d}",
                email=f"user{n}@example.com" if n % 3 else "",
                first_name=["Zoë", 'Quote "me"', "line\nbreak", "", "李"][n % 5],
                last_name=f"Last{n}",
                metadata={
                    "n": n,
                    "ratio": n / 7,
                    "plan": ["free", "pro"][n % 2],
                    "nested": {"ok": n % 2 == 0, "list": [1, "x", None, {"deep": [n]}]},
                }
                if n % 4
                else {},
            )
        )
    return made


def manifest_of(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    return manifest


def no_leftovers(folder: Path, *expected: str) -> None:
    """Nothing but ``expected`` in ``folder``: no temporary file of an export is left behind."""
    assert sorted(entry.name for entry in folder.iterdir()) == sorted(expected)


# ------------------------------------------------------------------------------------ export


@pytest.mark.usefixtures("empty_store")
def test_jsonl_export_then_import_into_an_empty_store_gives_the_same_users(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, db: peewee.Database, tmp_path: Path
) -> None:
    sample_users(users)
    before = {user.user_id: as_json(user) for user in all_users(users)}
    out = tmp_path / "users.jsonl"

    succeeded(memstore("export", "--out", out, "--address", server.target))

    lines = out.read_text(encoding="utf-8").splitlines()
    exported = [json.loads(line) for line in lines]
    assert [user["user_id"] for user in exported] == sorted(before, key=lambda uid: before[uid]["id"])
    for user in exported:
        assert tuple(user) == EXPORTED_FIELDS
        assert type(user["id"]) is int
        assert type(user["session_count"]) is int
        assert isinstance(user["metadata"], dict)
        stored = before[user["user_id"]]
        assert rfc3339(user["created_at"]) == rfc3339(stored["created_at"])
        assert rfc3339(user["updated_at"]) == rfc3339(stored["updated_at"])
        assert {**user, "created_at": None, "updated_at": None} == {
            **stored,
            "created_at": None,
            "updated_at": None,
        }
    manifest = manifest_of(out)
    assert manifest["format"] == "jsonl"
    assert manifest["count"] == len(before)
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert isinstance(manifest["resume_token"], str)
    assert manifest["resume_token"]
    no_leftovers(tmp_path, "users.jsonl", "users.jsonl.manifest.json")

    with db.connection_context():
        db.execute_sql("TRUNCATE sessions, users")
    result = succeeded(memstore("import", out, "--address", server.target, "--batch-size", "7"))

    assert f"imported {len(before)} users" in result.stderr
    after = {user.user_id: as_json(user) for user in all_users(users)}
    assert {uid: imported_fields(user) for uid, user in after.items()} == {
        uid: imported_fields(user) for uid, user in before.items()
    }


@pytest.mark.usefixtures("empty_store")
def test_parquet_export_reads_back_typed_in_pyarrow_and_imports(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, db: peewee.Database, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sample_users(users)
    before = {user.user_id: as_json(user) for user in all_users(users)}
    out = tmp_path / "users.parquet"

    succeeded(memstore("export", "--format", "parquet", "--out", out, "--address", server.target))

    table = pq.read_table(out)
    stamp = pa.timestamp("us", tz="UTC")
    assert dict(zip(table.schema.names, table.schema.types, strict=True)) == {
        "user_id": pa.string(),
        "email": pa.string(),
        "first_name": pa.string(),
        "last_name": pa.string(),
        "metadata": pa.string(),
        "uuid": pa.string(),
        "id": pa.int64(),
        "created_at": stamp,
        "updated_at": stamp,
        "session_count": pa.int64(),
    }
    rows = table.to_pylist()
    assert len(rows) == len(before)
    for row in rows:
        stored = before[row["user_id"]]
        assert json.loads(row["metadata"]) == stored["metadata"]
        assert row["created_at"] == rfc3339(stored["created_at"])
        assert row["updated_at"] == rfc3339(stored["updated_at"])
        assert (row["id"], row["uuid"], row["session_count"]) == (
            stored["id"],
            stored["uuid"],
            stored["session_count"],
        )
        assert (row["email"], row["first_name"], row["last_name"]) == (
            stored["email"],
            stored["first_name"],
            stored["last_name"],
        )
    manifest = manifest_of(out)
    assert (manifest["format"], manifest["count"]) == ("parquet", len(before))
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    with db.connection_context():
        db.execute_sql("TRUNCATE sessions, users")
    succeeded(memstore("import", out, "--address", server.target))  # the format from the name
    after = {user.user_id: imported_fields(as_json(user)) for user in all_users(users)}
    assert after == {uid: imported_fields(user) for uid, user in before.items()}


@pytest.mark.usefixtures("empty_store")
def test_exports_of_the_same_users_are_the_same_bytes_each_user_once_in_id_order(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, db: peewee.Database, tmp_path: Path
) -> None:
    sample_users(users)
    bulk_users(db, 5000)  # several windows, which the server reads at once
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    succeeded(memstore("export", "--out", first, "--address", server.target))
    succeeded(memstore("export", "--out", second, "--address", server.target))
    assert first.read_bytes() == second.read_bytes()
    assert manifest_of(first)["sha256"] == manifest_of(second)["sha256"]
    lines = first.read_bytes().split(b"\n")
    assert lines.pop() == b""  # every line ends in a newline
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == sorted(set(ids))
    assert ids == [user.id for user in all_users(users)]
    assert manifest_of(second)["count"] == len(ids) == 5025


@pytest.mark.usefixtures("empty_store")
def test_export_to_stdout_and_import_from_stdin(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, db: peewee.Database
) -> None:
    made = sample_users(users, 5)
    env = {"MEMSTORE_ADDR": server.target}  # the address from the environment
    exported = succeeded(memstore("export", env=env)).stdout
    assert [json.loads(line)["user_id"] for line in exported.splitlines()] == [user.user_id for user in made]

    with db.connection_context():
        db.execute_sql("TRUNCATE sessions, users")
    succeeded(memstore("import", "-", env=env, stdin=exported))
    assert sorted(user.user_id for user in all_users(users)) == sorted(user.user_id for user in made)


@pytest.mark.usefixtures("empty_store")
def test_export_of_an_empty_store_is_an_empty_file_with_a_manifest(
    server: ServerAddress, tmp_path: Path
) -> None:
    out = tmp_path / "none.jsonl"
    succeeded(memstore("export", "--out", out, "--address", server.target))
    assert out.read_bytes() == b""
    manifest = manifest_of(out)
    assert (manifest["count"], manifest["sha256"]) == (0, hashlib.sha256(b"").hexdigest())


def test_export_filter_writes_only_the_matching_users(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, tmp_path: Path
) -> None:
    prefix = unique("filtered")
    wanted = [create(users, f"{prefix}-{n}", metadata={"plan": "pro" if n % 2 else "free"}) for n in range(6)]
    out = tmp_path / "pro.jsonl"
    filter_text = f'user_id = "{prefix}-*" AND metadata.plan = "pro"'
    succeeded(memstore("export", "--filter", filter_text, "--out", out, "--address", server.target))
    exported = [json.loads(line)["user_id"] for line in out.read_text().splitlines()]
    assert exported == [user.user_id for user in wanted if user.metadata["plan"] == "pro"]
    assert manifest_of(out)["filter"] == filter_text
    bad = memstore("export", "--filter", "metadata.plan ===", "--address", server.target)
    assert bad.returncode == exits.USAGE_ERROR, bad.stderr
    assert "--filter" in bad.stderr


@pytest.mark.usefixtures("empty_store")
def test_a_reader_that_goes_away_ends_the_export_quietly(server: ServerAddress, db: peewee.Database) -> None:
    bulk_users(db, 3000)  # about a megabyte of lines: far more than a pipe holds
    process = subprocess.Popen(
        [str(MEMSTORE), "export", "--address", server.target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_environment(),
    )
    assert process.stdout is not None
    assert json.loads(process.stdout.readline())["user_id"].startswith("bulk-")
    process.stdout.close()  # as `head -1` does
    _, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
    assert process.returncode == exits.BROKEN_PIPE, stderr
    assert b"Traceback" not in stderr


def test_progress_is_drawn_on_a_terminal_and_never_into_a_pipe(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, tmp_path: Path
) -> None:
    create(users, unique("progress"))
    piped = succeeded(memstore("export", "--out", tmp_path / "piped.jsonl", "--address", server.target))
    assert "\r" not in piped.stderr
    for line in piped.stderr.splitlines():  # the summary, and a warning while WatchUsers is not served
        assert line.startswith(("memstore: exported ", "memstore: warning: ")), line

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct_module.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        process = subprocess.Popen(
            [str(MEMSTORE), "export", "--out", str(tmp_path / "tty.jsonl"), "--address", server.target],
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=server_environment(),
        )
        assert process.wait(timeout=COMMAND_TIMEOUT) == 0
        os.close(terminal)
        drawn = b""
        while True:
            try:
                block = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed and everything was read
                break
            if not block:
                break
            drawn += block
    finally:
        os.close(controller)
    assert b"exporting" in drawn  # the bar's label; the summary says "exported"
    assert b"%|" in drawn  # a bar with a total: CountUsers told how many to expect


# ------------------------------------------------------------------------------------ import


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def line_of(user_id: str, **fields: Any) -> str:
    return json.dumps({"user_id": user_id, **fields})


def existing(db: peewee.Database, user_ids: list[str]) -> set[str]:
    with db.connection_context():
        rows = db.execute_sql("SELECT user_id FROM users WHERE user_id = ANY(%s)", (user_ids,)).fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize(
    ("bad_line", "field", "words"),
    [
        ("{not json", "", "not JSON"),
        ('["a", "list"]', "", "expected a JSON object, got an array"),
        ('{"email": "x@example.com"}', "user_id", "required"),
        ('{"user_id": 5}', "user_id", "required"),
        ('{"user_id": "u", "email": 3}', "email", "expected a string, got a number"),
        ('{"user_id": "u", "metadata": [1]}', "metadata", "expected a JSON object, got an array"),
        ('{"user_id": "u", "emial": "x@example.com"}', "emial", "unknown field"),
        ('{"user_id": "u", "metadata": {"a": ' + "[" * 50_000 + "]" * 50_000 + "}}", "", "nested too deeply"),
    ],
)
def test_an_invalid_line_stops_the_import_with_its_number_field_and_count(  # noqa: PLR0917
    server: ServerAddress, db: peewee.Database, tmp_path: Path, bad_line: str, field: str, words: str
) -> None:
    prefix = unique("bad")
    good = [f"{prefix}-{n}" for n in range(1, 8)]
    lines = [line_of(uid) for uid in good[:5]] + [bad_line] + [line_of(uid) for uid in good[5:]]
    source = write_lines(tmp_path / "in.jsonl", lines)

    result = memstore("import", source, "--batch-size", "2", "--address", server.target)

    assert result.returncode == exits.DATA_ERROR, result.stderr
    assert (f"line 6: {field}: " if field else "line 6: ") in result.stderr
    assert words in result.stderr
    assert "5 users were created before it" in result.stderr
    assert existing(db, good) == set(good[:5])  # every line before it, none after


def test_a_line_the_server_refuses_is_named_by_its_number_and_field(
    server: ServerAddress, db: peewee.Database, tmp_path: Path
) -> None:
    prefix = unique("refused")
    ids = [f"{prefix}-{n}" for n in range(1, 10)]
    lines = [line_of(uid, email=f"{uid}@example.com") for uid in ids]
    lines[4] = line_of(ids[4], email="not an address")  # line 5: requests[1] of the second batch of 3
    source = write_lines(tmp_path / "in.jsonl", lines)

    result = memstore("import", source, "--batch-size", "3", "--parallel", "1", "--address", server.target)

    assert result.returncode == exits.DATA_ERROR, result.stderr
    assert "line 5: email: " in result.stderr
    assert "INVALID_ARGUMENT" in result.stderr
    assert "3 users were created before it" in result.stderr
    assert existing(db, ids) == set(ids[:3])  # the refused batch created nothing


def test_users_created_by_later_batches_already_sent_are_counted_apart(
    server: ServerAddress, db: peewee.Database, tmp_path: Path
) -> None:
    """Batches go out several at a time: those sent after the refused one still create their users."""
    prefix = unique("inflight")
    ids = [f"{prefix}-{n}" for n in range(1, 10)]
    lines = [line_of(uid) for uid in ids]
    lines[1] = line_of(ids[1], email="not an address")  # line 2, in the first of three batches
    source = write_lines(tmp_path / "in.jsonl", lines)

    result = memstore("import", source, "--batch-size", "3", "--parallel", "3", "--address", server.target)

    assert result.returncode == exits.DATA_ERROR, result.stderr
    assert "line 2: email: " in result.stderr
    assert "0 users were created before it (and 6 from later lines, whose batches were already sent)" in (
        result.stderr
    )
    assert existing(db, ids) == set(ids[3:])


def test_a_user_id_twice_in_one_batch_is_named_by_its_second_line(
    server: ServerAddress, db: peewee.Database, tmp_path: Path
) -> None:
    uid = unique("twice")
    source = write_lines(tmp_path / "in.jsonl", [line_of(uid), line_of(f"{uid}-b"), line_of(uid)])
    result = memstore("import", source, "--address", server.target)
    assert result.returncode == exits.DATA_ERROR, result.stderr
    assert f"line 3: user_id: user_id '{uid}' appears twice" in result.stderr
    assert existing(db, [uid, f"{uid}-b"]) == set()


def test_skip_existing_reruns_leave_existing_users_as_they_are(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, tmp_path: Path
) -> None:
    prefix = unique("rerun")
    first = write_lines(
        tmp_path / "first.jsonl", [line_of(f"{prefix}-{n}", first_name="Old") for n in range(5)]
    )
    succeeded(memstore("import", first, "--address", server.target))
    second = write_lines(
        tmp_path / "second.jsonl", [line_of(f"{prefix}-{n}", first_name="New") for n in range(8)]
    )

    refused = memstore("import", second, "--address", server.target, "--batch-size", "3", "--parallel", "1")
    assert refused.returncode == exits.DATA_ERROR
    assert f"line 1: user_id: user '{prefix}-0' already exists" in refused.stderr
    assert "0 users were created before it" in refused.stderr
    assert "--skip-existing" in refused.stderr

    result = succeeded(memstore("import", second, "--skip-existing", "--address", server.target))
    assert "imported 3 users, 5 skipped" in result.stderr
    again = succeeded(memstore("import", second, "--skip-existing", "--address", server.target))
    assert "imported 0 users, 8 skipped" in again.stderr
    names = {
        user.user_id: user.first_name for user in all_users(users) if user.user_id.startswith(prefix + "-")
    }
    assert names == {f"{prefix}-{n}": "Old" if n < 5 else "New" for n in range(8)}


def test_a_parquet_row_with_bad_metadata_is_named_by_its_row(
    server: ServerAddress, db: peewee.Database, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    prefix = unique("rows")
    ids = [f"{prefix}-{n}" for n in range(1, 5)]
    table = pa.table({"user_id": ids, "metadata": ['{"a": 1}', None, "{not json", "{}"]})
    source = tmp_path / "users.parquet"
    pq.write_table(table, source)

    result = memstore("import", source, "--address", server.target)

    assert result.returncode == exits.DATA_ERROR, result.stderr
    assert "row 3: metadata: not JSON text" in result.stderr
    assert "2 users were created before it" in result.stderr
    assert existing(db, ids) == set(ids[:2])


def test_import_finds_the_format_from_the_content_and_reads_past_blank_lines(
    server: ServerAddress, db: peewee.Database, tmp_path: Path
) -> None:
    prefix = unique("fmt")
    source = tmp_path / "users.data"  # no telling suffix
    source.write_text(f"{line_of(prefix + '-1')}\n\n{line_of(prefix + '-2')}\n", encoding="utf-8")
    succeeded(memstore("import", source, "--address", server.target))
    assert existing(db, [f"{prefix}-1", f"{prefix}-2"]) == {f"{prefix}-1", f"{prefix}-2"}


def test_large_metadata_is_sent_in_batches_that_fit(
    server: ServerAddress, db: peewee.Database, tmp_path: Path
) -> None:
    """40 users of about 60 KB each would be one 2.4 MB request of 40: the import cuts it by size."""
    prefix = unique("large")
    ids = [f"{prefix}-{n}" for n in range(40)]
    lines = [line_of(uid, metadata={"pad": "x" * 60_000}) for uid in ids]
    source = write_lines(tmp_path / "big.jsonl", lines)
    succeeded(memstore("import", source, "--batch-size", "1000", "--address", server.target))
    assert existing(db, ids) == set(ids)


# ------------------------------------------------------------------------------------ exit codes


@pytest.mark.parametrize(
    "args",
    [
        ("export", "--format", "csv"),
        ("import",),
        ("import", "x.jsonl", "--batch-size", "0"),
        ("import", "x.jsonl", "--batch-size", "1001"),
        ("watch", "--since", "t", "--initial"),
        ("watch", "--limit", "0"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = memstore(*args, "--address", "127.0.0.1:9")
    assert result.returncode == exits.USAGE_ERROR, result.stderr
    assert result.stderr


def test_help_documents_exit_codes_and_every_subcommand() -> None:
    text = succeeded(memstore("--help")).stdout
    for words in ("export", "import", "watch", "exit codes:", "130", "MEMSTORE_ADDR", "MEMSTORE_TOKEN"):
        assert words in text
    for command in ("export", "import", "watch"):
        sub = succeeded(memstore(command, "--help")).stdout
        for words in ("--address", "--token", "--tls-ca", "exit codes:"):
            assert words in sub


def test_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        source = write_lines(tmp_path / "in.jsonl", [line_of("someone")])
        for args in (("export",), ("import", str(source)), ("export", "--out", str(tmp_path / "out.jsonl"))):
            result = memstore(*args, "--address", address)
            assert result.returncode == exits.SERVER_ERROR, result.stderr
            assert "UNAVAILABLE" in result.stderr
    no_leftovers(tmp_path, "in.jsonl")


def test_a_missing_file_exits_1(server: ServerAddress, tmp_path: Path) -> None:
    result = memstore("import", tmp_path / "nothing.jsonl", "--address", server.target)
    assert result.returncode == exits.DATA_ERROR
    assert "nothing.jsonl" in result.stderr


def test_token_and_its_variable_are_sent_as_bearer(
    start_server: Callable[[Settings], RunningServer], tmp_path: Path
) -> None:
    guarded = start_server(Settings(listen="127.0.0.1:0", api_keys=("cli-key",))).target
    refused = memstore("export", "--address", guarded)
    assert refused.returncode == exits.SERVER_ERROR
    assert "UNAUTHENTICATED" in refused.stderr
    succeeded(memstore("export", "--address", guarded, "--token", "cli-key"))
    succeeded(memstore("export", "--address", guarded, env={"MEMSTORE_TOKEN": "cli-key"}))


def test_tls_ca_is_used_to_reach_a_tls_server(
    start_server: Callable[[Settings], RunningServer], tmp_path: Path
) -> None:
    from tests.certificates import make_certificates

    certs = make_certificates(tmp_path)
    tls_server = start_server(
        Settings(listen="127.0.0.1:0", tls_cert=certs.server_cert, tls_key=certs.server_key)
    )
    address = f"localhost:{tls_server.port}"
    succeeded(memstore("export", "--address", address, "--tls-ca", certs.ca))
    plaintext = memstore("export", "--address", address)
    assert plaintext.returncode == exits.SERVER_ERROR
    missing = memstore("export", "--address", address, "--tls-ca", tmp_path / "absent.pem")
    assert missing.returncode == exits.USAGE_ERROR
    assert "absent.pem" in missing.stderr


def test_parquet_without_pyarrow_is_a_clear_usage_error(tmp_path: Path) -> None:
    """As where the [parquet] extra is not installed: pyarrow cannot be imported."""
    hide_pyarrow = (
        "import sys; sys.modules['pyarrow'] = None; sys.argv[0] = 'memstore'; "
        "from memstore_client.cli import main; sys.exit(main())"
    )
    for args in (("export", "--format", "parquet", "--out", "u.parquet"), ("import", "u.parquet")):
        result = subprocess.run(
            [sys.executable, "-c", hide_pyarrow, *args, "--address", "127.0.0.1:9"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            cwd=tmp_path,
            env=server_environment(),
        )
        assert result.returncode == exits.USAGE_ERROR, result.stderr
        assert "pip install 'memstore-client[parquet]'" in result.stderr
    no_leftovers(tmp_path)


class SilentServer:
    """A TCP port that accepts connections and never answers: a call to it waits forever."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen()
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted = threading.Event()
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._connections.append(connection)
            self.accepted.set()

    def close(self) -> None:
        self._socket.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    silent = SilentServer()
    yield silent
    silent.close()


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_export_exits_128_plus_the_signal_and_leaves_no_file(
    silent_server: SilentServer, tmp_path: Path, signal_number: int, code: int
) -> None:
    out = tmp_path / "users.jsonl"
    process = started("export", "--out", str(out), "--address", silent_server.address)
    try:
        # Connected, and the temporary file exists: the export is under way.
        assert wait_for(lambda: silent_server.accepted.is_set() and any(tmp_path.iterdir()), 60)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == code, stderr
    no_leftovers(tmp_path)


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_import_exits_128_plus_the_signal(
    silent_server: SilentServer, tmp_path: Path, signal_number: int, code: int
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [line_of(f"waiting-{n}") for n in range(10)])
    process = started("import", str(source), "--address", silent_server.address)
    try:
        assert wait_for(silent_server.accepted.is_set, 60)  # its batch is on its way
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr


def readme_examples(repo_root: Path) -> list[str]:
    """The commands of the README's first shell block about the memstore command."""
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The memstore command") :]
    block = section[
        section.index("```sh\n") + len("```sh\n") : section.index("\n```", section.index("```sh"))
    ]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.usefixtures("empty_store")
def test_the_readme_examples_run_as_written(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, repo_root: Path, tmp_path: Path
) -> None:
    """Every line but the endless watch, with memstore and make run's address as the README sets them."""
    sample_users(users, 5)
    lines = readme_examples(repo_root)
    assert lines[0] == "alias memstore=.venv/bin/memstore"
    assert lines[-1].startswith("memstore watch ")
    script = "\n".join(["set -eo pipefail", f'memstore() {{ "{MEMSTORE}" "$@"; }}', *lines[1:-1]])
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT * 2,
        check=False,
        cwd=tmp_path,
        env={**server_environment(), "MEMSTORE_ADDR": server.target},
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3  # export | head -3
    for name in ("users.jsonl", "users.parquet"):
        assert manifest_of(tmp_path / name)["count"] == 5
    assert "imported 0 users, 5 skipped" in result.stderr


# ------------------------------------------------------------------------------------ watch


def started(*args: str) -> subprocess.Popen[str]:
    """``memstore ARGS`` running in the background, its output read as text by the test."""
    return subprocess.Popen(
        [str(MEMSTORE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_environment(),
    )


def watch_lines(process: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    """The next ``count`` JSON lines the watch prints (it must print them before the test's timeout)."""
    assert process.stdout is not None
    found = []
    for _ in range(count):
        line = process.stdout.readline()
        assert line, f"the watch ended early (exit {process.poll()})"
        found.append(json.loads(line))
    return found


def test_watch_from_an_export_manifest_sees_the_changes_made_after_the_export_began(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, tmp_path: Path
) -> None:
    prefix = unique("watched")
    kept = create(users, f"{prefix}-kept", first_name="Before")
    out = tmp_path / "snapshot.jsonl"
    succeeded(memstore("export", "--out", out, "--address", server.target))
    token = manifest_of(out)["resume_token"]
    assert token

    # Changes after the export: a create, an update, a delete.
    added = create(users, f"{prefix}-added")
    users.UpdateUser(users_pb2.UpdateUserRequest(user_id=kept.user_id, first_name="After"), timeout=TIMEOUT)
    users.DeleteUser(users_pb2.DeleteUserRequest(user_id=added.user_id), timeout=TIMEOUT)

    manifest = manifest_of_path(out)
    result = succeeded(
        memstore("watch", "--since-manifest", manifest, "--limit", "3", "--address", server.target)
    )
    events = [json.loads(line) for line in result.stdout.splitlines()]
    ours = [(event["type"], event["user"]["user_id"]) for event in events]
    assert ours == [
        ("TYPE_CREATED", added.user_id),
        ("TYPE_UPDATED", kept.user_id),
        ("TYPE_DELETED", added.user_id),
    ]
    assert events[1]["user"]["first_name"] == "After"
    for event in events:
        assert event["resume_token"]
        rfc3339(event["commit_time"])
    # The same from the token itself, and the state rebuilt from the export plus the events.
    by_token = succeeded(memstore("watch", "--since", token, "--limit", "3", "--address", server.target))
    assert [json.loads(line)["user"]["user_id"] for line in by_token.stdout.splitlines()] == [
        user_id for _, user_id in ours
    ]


def manifest_of_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


@pytest.mark.usefixtures("empty_store")
def test_an_export_plus_the_watch_from_its_manifest_rebuilds_what_list_users_shows(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, tmp_path: Path
) -> None:
    made = sample_users(users, 12)
    out = tmp_path / "base.jsonl"
    stop = threading.Event()

    def write_meanwhile() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            user_id = made[n % len(made)].user_id
            users.UpdateUser(
                users_pb2.UpdateUserRequest(user_id=user_id, metadata=struct({"step": n})), timeout=TIMEOUT
            )
            n += 1

    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    try:
        succeeded(memstore("export", "--out", out, "--address", server.target))
    finally:
        stop.set()
        writer.join(60)
    create(users, unique("late"))
    users.DeleteUser(users_pb2.DeleteUserRequest(user_id=made[0].user_id), timeout=TIMEOUT)
    marker = create(users, unique("marker"))

    state = {user["user_id"]: user for user in map(json.loads, out.read_text().splitlines())}
    process = started("watch", "--since-manifest", str(manifest_of_path(out)), "--address", server.target)
    try:
        while True:  # until the marker, the last change made
            (event,) = watch_lines(process, 1)
            user = event["user"]
            if event["type"] == "TYPE_DELETED":
                state.pop(user["user_id"], None)
            else:
                state[user["user_id"]] = user
            if user["user_id"] == marker.user_id:
                break
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == exits.INTERRUPTED, stderr
    assert {uid: with_times(user) for uid, user in state.items()} == {
        user.user_id: with_times(as_json(user)) for user in all_users(users)
    }


def test_watch_resumes_by_itself_after_the_server_goes_away(
    server: ServerAddress,
    users: users_pb2_grpc.UserServiceStub,
    db: peewee.Database,
    start_server: Callable[[Settings], RunningServer],
) -> None:
    port = free_port()
    first = start_server(Settings(listen=f"127.0.0.1:{port}"))
    prefix = unique("resumed")
    process = started("watch", "--heartbeats", "--address", first.target)
    try:
        (first_message,) = watch_lines(process, 1)  # the stream's first message: the watch has begun
        assert first_message["heartbeat"] is True
        create(users, f"{prefix}-1")
        while not _is(watch_lines(process, 1)[0], f"{prefix}-1"):
            pass
        first.stop(grace=0)
        create(users, f"{prefix}-2")  # while the watch's server is down
        start_server(Settings(listen=f"127.0.0.1:{port}"))
        while True:
            (event,) = watch_lines(process, 1)
            if _is(event, f"{prefix}-2"):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == exits.TERMINATED
    assert "resuming from the last token" in stderr


def _is(event: dict[str, Any], user_id: str) -> bool:
    return event.get("type") == "TYPE_CREATED" and event["user"]["user_id"] == user_id


@pytest.mark.usefixtures("empty_store")
def test_watch_initial_prints_the_snapshot_its_end_then_the_changes(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub
) -> None:
    made = sample_users(users, 3)
    process = started("watch", "--initial", "--address", server.target)
    try:
        snapshot = watch_lines(process, 4)
        assert [(line.get("type"), line.get("user", {}).get("user_id")) for line in snapshot[:3]] == [
            ("TYPE_EXISTING", user.user_id) for user in made
        ]
        assert all(line["resume_token"] is None for line in snapshot[:3])  # none is safe mid-snapshot
        assert snapshot[3]["initial_complete"] is True
        assert snapshot[3]["resume_token"]
        added = create(users, unique("after-snapshot"))
        (change,) = watch_lines(process, 1)
        assert (change["type"], change["user"]["user_id"]) == ("TYPE_CREATED", added.user_id)
        assert change["resume_token"]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == exits.INTERRUPTED, stderr


def test_a_manifest_older_than_the_change_retention_exits_4(
    server: ServerAddress, users: users_pb2_grpc.UserServiceStub, db: peewee.Database, tmp_path: Path
) -> None:
    from memstore_server.store.changes import ChangeStore

    out = tmp_path / "old.jsonl"
    succeeded(memstore("export", "--out", out, "--address", server.target))
    create(users, unique("pruned"))
    # What the server's retention does after --change-retention: here, to every change at once.
    assert wait_for(lambda: ChangeStore(db).prune(0, batch=1000) > 0, 30)

    result = memstore("watch", "--since-manifest", manifest_of_path(out), "--address", server.target)

    assert result.returncode == exits.TOKEN_EXPIRED, result.stderr
    assert "RESUME_TOKEN_EXPIRED" in result.stderr
    assert "export again" in result.stderr


def test_a_bad_resume_token_is_a_usage_error(server: ServerAddress) -> None:
    result = memstore("watch", "--since", "not-a-token", "--address", server.target)
    assert result.returncode == exits.USAGE_ERROR, result.stderr
    assert "INVALID_RESUME_TOKEN" in result.stderr


# ------------------------------------------------------------------------------------ records


@given(record=json_values)
def test_a_record_without_a_user_id_is_refused_with_a_reason(record: Any) -> None:
    assume(not (isinstance(record, dict) and "user_id" in record))
    with pytest.raises(RecordError) as refused:
        create_request(record)
    assert refused.value.description
