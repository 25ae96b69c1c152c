"""Generate the Python stubs of memstore.v1 from protos/ with grpcio-tools, and the
descriptor set with the protos' comments that the server's reflection serves.

Used by ``make proto`` (writing into the client package and the server package)
and by the freshness test (writing into a scratch folder and comparing), so both
run the very same generator with the very same flags.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "client" / "python" / "src"
# Generated stubs carry no comments; this file keeps them (source info) for reflection.
DEFAULT_DESCRIPTORS = REPO_ROOT / "server" / "memstore_server" / "memstore_v1.binpb"


def proto_files() -> list[Path]:
    """All .proto files of the API, in a stable order."""
    return sorted(PROTO_ROOT.glob("memstore/**/*.proto"))


def generate(out_dir: Path, descriptors: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir, and their
    FileDescriptorSet with source info (comments) to ``descriptors``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptors.parent.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={descriptors}",
        "--include_source_info",
        *(str(path.relative_to(PROTO_ROOT)) for path in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output root (default: the client package)"
    )
    parser.add_argument(
        "--descriptors",
        type=Path,
        default=DEFAULT_DESCRIPTORS,
        help="descriptor set output (default: the server package)",
    )
    args = parser.parse_args()
    generate(args.out, args.descriptors)


if __name__ == "__main__":
    main()
