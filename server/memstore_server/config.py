"""Settings of one server process, built once at start-up from flags and environment.

Everything below the entry point receives a :class:`Settings` and never reads the
environment itself, so a test can build any configuration in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2.extensions

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path(".memstore")


class ConfigError(ValueError):
    """A setting is malformed; the message names the flag and the variable."""


@dataclass(frozen=True)
class Settings:
    """One process's configuration, validated when built."""

    listen: str = DEFAULT_LISTEN
    # None means: run an embedded PostgreSQL under data_dir.
    database_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    # Threads answering RPCs; each RPC in flight holds one (a stream for its whole life).
    max_workers: int = 16
    # Pooled database connections; more than max_workers is never used.
    db_pool_size: int = 16
    # Seconds an RPC waits for a free pooled connection before UNAVAILABLE.
    db_pool_timeout: float = 5.0
    # Seconds in-flight RPCs get to finish after SIGTERM / Ctrl-C.
    grace_period: float = 10.0
    # Largest request accepted, in bytes.
    max_receive_message_bytes: int = 4 * 1024 * 1024
    extra_grpc_options: tuple[tuple[str, int | str], ...] = field(default=())

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"--listen / MEMSTORE_LISTEN must be HOST:PORT, got {self.listen!r}")
        if self.database_url is not None:
            try:
                psycopg2.extensions.parse_dsn(self.database_url)
            except psycopg2.ProgrammingError as error:
                raise ConfigError(
                    "--database-url / MEMSTORE_DATABASE_URL must be a postgresql:// URL "
                    "or a libpq key=value string"
                ) from error
        if logging.getLevelName(self.log_level.upper()) == f"Level {self.log_level.upper()}":
            raise ConfigError(f"--log-level / MEMSTORE_LOG_LEVEL: unknown level {self.log_level!r}")
        for name in ("max_workers", "db_pool_size", "max_receive_message_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.grace_period < 0 or self.db_pool_timeout <= 0:
            raise ConfigError("grace period must be >= 0 and pool timeout > 0")

    @property
    def uses_embedded_database(self) -> bool:
        """True when no database URL was given, so the server runs its own PostgreSQL."""
        return self.database_url is None


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Declare every flag, each defaulting to its MEMSTORE_* variable, then to the built-in default."""
    parser.add_argument(
        "--listen",
        default=environ.get("MEMSTORE_LISTEN", DEFAULT_LISTEN),
        help="address to serve gRPC on, HOST:PORT (env MEMSTORE_LISTEN; default %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        default=environ.get("MEMSTORE_DATABASE_URL") or None,
        help="PostgreSQL URL (env MEMSTORE_DATABASE_URL); unset: an embedded PostgreSQL under --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(environ.get("MEMSTORE_DATA_DIR", str(DEFAULT_DATA_DIR))),
        help="where the embedded PostgreSQL keeps its data (env MEMSTORE_DATA_DIR; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=environ.get("MEMSTORE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (env MEMSTORE_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=int(environ.get("MEMSTORE_MAX_WORKERS", "16")),
        help="threads answering RPCs (env MEMSTORE_MAX_WORKERS; default %(default)s)",
    )
    parser.add_argument(
        "--db-pool-size",
        type=int,
        default=int(environ.get("MEMSTORE_DB_POOL_SIZE", "16")),
        help="pooled database connections (env MEMSTORE_DB_POOL_SIZE; default %(default)s)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=float(environ.get("MEMSTORE_GRACE_PERIOD", "10")),
        help="seconds in-flight RPCs get on shutdown (env MEMSTORE_GRACE_PERIOD; default %(default)s)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build the validated Settings from parsed flags."""
    return Settings(
        listen=args.listen,
        database_url=args.database_url,
        data_dir=args.data_dir,
        log_level=args.log_level.upper(),
        max_workers=args.max_workers,
        db_pool_size=args.db_pool_size,
        grace_period=args.grace_period,
    )


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Parse flags (falling back to the environment) into Settings; for callers outside the CLI."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, os.environ if environ is None else environ)
    return settings_from_args(parser.parse_args(list(argv)))
