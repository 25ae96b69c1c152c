"""Where an export goes: stdout, or a file that appears whole or not at all, with its sha256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from memstore_client.cli.exits import DATA_ERROR, CommandError


class HashingWriter:
    """A binary stream that counts and hashes what passes through it on its way to ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.closed = True  # the underlying file is closed by its owner

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class AtomicFile:
    """``path`` written under a temporary name in its folder and renamed over it on success.

    On any failure or interruption the temporary file is removed, so a reader of
    ``path`` never sees half an export.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            self._file: BinaryIO = self.temporary.open("wb")
        except OSError as error:
            raise CommandError(f"cannot write {path}: {error.strerror}", DATA_ERROR) from None
        self.writer = HashingWriter(self._file)

    def __enter__(self) -> AtomicFile:
        return self

    def commit(self) -> None:
        """Make the file durable and give it its real name."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temporary, self.path)
        except OSError as error:
            raise CommandError(f"cannot write {self.path}: {error.strerror}", DATA_ERROR) from None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.temporary.unlink()


def write_atomically(path: Path, data: bytes) -> None:
    """A small file (a manifest) written whole or not at all."""
    with AtomicFile(path) as target:
        target.writer.write(data)
        target.commit()


def stdout_writer() -> HashingWriter:
    return HashingWriter(sys.stdout.buffer)
