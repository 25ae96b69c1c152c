"""The committed stubs are exactly what `make proto` generates from protos/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_committed_stubs_are_fresh(repo_root: Path, tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "generate_protos.py"),
            "--out",
            str(tmp_path / "stubs"),
            "--descriptors",
            str(tmp_path / "memstore_v1.binpb"),
        ],
        check=True,
        timeout=120,
    )
    stubs = tmp_path / "stubs"
    generated = {p.relative_to(stubs): p.read_bytes() for p in stubs.rglob("*") if p.is_file()}
    assert generated, "the generator wrote nothing"
    committed_root = repo_root / "client" / "python" / "src"
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in (committed_root / "memstore").rglob("*_pb2*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    stale = sorted(str(path) for path in generated if committed.get(path) != generated[path])
    extra = sorted(str(path) for path in set(committed) - set(generated))
    assert not stale, f"stale generated files {stale}: run `make proto` and commit"
    assert not extra, f"generated files without a proto {extra}: delete them"
    descriptors = repo_root / "server" / "memstore_server" / "memstore_v1.binpb"
    assert descriptors.read_bytes() == (tmp_path / "memstore_v1.binpb").read_bytes(), (
        "stale descriptor set for reflection: run `make proto` and commit"
    )


def test_client_package_holds_no_server_code(repo_root: Path) -> None:
    client_src = repo_root / "client" / "python" / "src"
    for path in client_src.rglob("*.py"):
        assert "memstore_server" not in path.read_text(), path
