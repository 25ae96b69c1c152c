"""Generate the Python stubs of memstore.v1 from protos/ with grpcio-tools.

Used by ``make proto`` (writing into the client package) and by the freshness
test (writing into a scratch folder and comparing), so both run the very same
generator with the very same flags.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "client" / "python" / "src"


def proto_files() -> list[Path]:
    """All .proto files of the API, in a stable order."""
    return sorted(PROTO_ROOT.glob("memstore/**/*.proto"))


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(path.relative_to(PROTO_ROOT)) for path in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output root (default: the client package)"
    )
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
