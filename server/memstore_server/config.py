"""Settings of one server process, built once at start-up from flags and environment.

Everything below the entry point receives a :class:`Settings` and never reads the
environment itself, so a test can build any configuration in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2.extensions

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path(".memstore")
# gRPC's own default limit, which clients also apply to what they receive.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A single user at its largest must fit in one message: 64 KiB of metadata as JSON can take
# over five times that as a protobuf Struct (a list of small numbers: 2 bytes each in JSON, 11).
MIN_MAX_MESSAGE_BYTES = 1024 * 1024


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
    log_format: str = "text"
    # HOST:PORT of the Prometheus endpoint; None: none.
    metrics_listen: str | None = None
    # Server processes sharing the port (SO_REUSEPORT); each has max_workers threads and a pool.
    workers: int = 1
    # Threads answering RPCs; each RPC in flight holds one (a stream for its whole life).
    max_workers: int = 16
    # Pooled database connections; more than max_workers is never used.
    db_pool_size: int = 16
    # Seconds an RPC waits for a free pooled connection before UNAVAILABLE.
    db_pool_timeout: float = 5.0
    # Seconds in-flight RPCs get to finish after SIGTERM / Ctrl-C.
    grace_period: float = 10.0
    # Largest gRPC message received or sent, in bytes; streamed chunks are split to fit.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Seconds between database probes behind the health service.
    health_interval: float = 2.0
    # Authentication: on when any key or a JWT secret is given. Kept out of repr.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: Path | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    # TLS: a certificate chain and its key; a client CA turns on mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    extra_grpc_options: tuple[tuple[str, int | str], ...] = field(default=())

    def __post_init__(self) -> None:
        _check_address("--listen / MEMSTORE_LISTEN", self.listen)
        if self.metrics_listen is not None:
            _check_address("--metrics-listen / MEMSTORE_METRICS_LISTEN", self.metrics_listen)
        if self.database_url is not None:
            _check_database_url(self.database_url)
        if self.log_format not in ("text", "json"):
            raise ConfigError(
                f"--log-format / MEMSTORE_LOG_FORMAT must be text or json, got {self.log_format!r}"
            )
        if logging.getLevelName(self.log_level.upper()) == f"Level {self.log_level.upper()}":
            raise ConfigError(f"--log-level / MEMSTORE_LOG_LEVEL: unknown level {self.log_level!r}")
        self._check_limits()
        self._check_tls()

    def _check_limits(self) -> None:
        for name in ("workers", "max_workers", "db_pool_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.workers > 1 and self.listen.endswith(":0"):
            raise ConfigError("--workers above 1 needs a fixed port: every worker binds the same one")
        if self.max_message_bytes < MIN_MAX_MESSAGE_BYTES:
            raise ConfigError(
                f"--max-message-bytes must be at least {MIN_MAX_MESSAGE_BYTES} (one largest user)"
            )
        if self.grace_period < 0 or self.db_pool_timeout <= 0 or self.health_interval <= 0:
            raise ConfigError("grace period must be >= 0; pool timeout and health interval > 0")

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"--{name.replace('_', '-')}: no such file {str(path)!r}")

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def uses_embedded_database(self) -> bool:
        """True when no database URL was given, so the server runs its own PostgreSQL."""
        return self.database_url is None


@dataclass(frozen=True)
class Option:
    """One setting as the command line and the environment spell it."""

    flag: str
    env: str
    help: str
    type: Callable[[str], Any] = str
    default: str | None = None


# Every setting of the command, in --help order. Deployment files are checked
# against these names by the tests, so they cannot drift apart.
OPTIONS: tuple[Option, ...] = (
    Option("--listen", "MEMSTORE_LISTEN", "address to serve gRPC on, HOST:PORT", default=DEFAULT_LISTEN),
    Option(
        "--database-url",
        "MEMSTORE_DATABASE_URL",
        "PostgreSQL URL or key=value string; unset: an embedded PostgreSQL under --data-dir",
    ),
    Option(
        "--data-dir",
        "MEMSTORE_DATA_DIR",
        "where the embedded PostgreSQL keeps its data",
        type=Path,
        default=str(DEFAULT_DATA_DIR),
    ),
    Option("--log-level", "MEMSTORE_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", default="INFO"),
    Option(
        "--log-format",
        "MEMSTORE_LOG_FORMAT",
        "text (for people) or json (one object per line)",
        default="text",
    ),
    Option(
        "--metrics-listen",
        "MEMSTORE_METRICS_LISTEN",
        "HOST:PORT to serve Prometheus metrics on (/metrics); unset: no metrics endpoint",
    ),
    Option(
        "--workers",
        "MEMSTORE_WORKERS",
        "server processes sharing the port, one core each",
        type=int,
        default="1",
    ),
    Option(
        "--max-workers", "MEMSTORE_MAX_WORKERS", "threads answering RPCs, per process", type=int, default="16"
    ),
    Option("--db-pool-size", "MEMSTORE_DB_POOL_SIZE", "pooled database connections", type=int, default="16"),
    Option(
        "--grace-period",
        "MEMSTORE_GRACE_PERIOD",
        "seconds in-flight RPCs get on shutdown",
        type=float,
        default="10",
    ),
    Option(
        "--max-message-bytes",
        "MEMSTORE_MAX_MESSAGE_BYTES",
        "largest gRPC message received or sent; streamed chunks are split to fit",
        type=int,
        default=str(DEFAULT_MAX_MESSAGE_BYTES),
    ),
    Option(
        "--health-interval",
        "MEMSTORE_HEALTH_INTERVAL",
        "seconds between the database probes behind the health service",
        type=float,
        default="2",
    ),
    Option(
        "--api-keys", "MEMSTORE_API_KEYS", "comma-separated API keys; any key or --jwt-secret turns auth on"
    ),
    Option(
        "--api-keys-file",
        "MEMSTORE_API_KEYS_FILE",
        "file of API keys, one per line, each a key or sha256:<hex digest>",
        type=Path,
    ),
    Option("--jwt-secret", "MEMSTORE_JWT_SECRET", "secret that HS256 bearer JWTs must be signed with"),
    Option("--tls-cert", "MEMSTORE_TLS_CERT", "PEM certificate chain: serve TLS", type=Path),
    Option("--tls-key", "MEMSTORE_TLS_KEY", "PEM private key of --tls-cert", type=Path),
    Option(
        "--tls-client-ca",
        "MEMSTORE_TLS_CLIENT_CA",
        "PEM CA that client certificates must chain to (mTLS)",
        type=Path,
    ),
)

ENVIRONMENT_VARIABLES = frozenset(option.env for option in OPTIONS)


def _check_address(names: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{names} must be HOST:PORT, got {address!r}")


def _check_database_url(url: str) -> None:
    try:
        psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as error:
        raise ConfigError(
            "--database-url / MEMSTORE_DATABASE_URL must be a postgresql:// URL or a libpq key=value string"
        ) from error


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Declare every flag, each defaulting to its MEMSTORE_* variable, then to the built-in default.

    Defaults are passed as strings so argparse converts (and rejects) a bad value
    from the environment exactly as it would the same value given as a flag.
    """
    for option in OPTIONS:
        default = environ.get(option.env) or option.default
        shown = f"; default {option.default}" if option.default is not None else ""
        parser.add_argument(
            option.flag, type=option.type, default=default, help=f"{option.help} (env {option.env}{shown})"
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build the validated Settings from parsed flags."""
    return Settings(
        listen=args.listen,
        database_url=args.database_url,
        data_dir=args.data_dir,
        log_level=args.log_level.upper(),
        log_format=args.log_format.lower(),
        metrics_listen=args.metrics_listen or None,
        workers=args.workers,
        max_workers=args.max_workers,
        db_pool_size=args.db_pool_size,
        grace_period=args.grace_period,
        max_message_bytes=args.max_message_bytes,
        health_interval=args.health_interval,
        api_keys=tuple(key.strip() for key in (args.api_keys or "").split(",") if key.strip()),
        api_keys_file=args.api_keys_file,
        jwt_secret=args.jwt_secret or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
    )


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Parse flags (falling back to the environment) into Settings; for callers outside the CLI."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, os.environ if environ is None else environ)
    return settings_from_args(parser.parse_args(list(argv)))
