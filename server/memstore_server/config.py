"""Settings of one server process, built once at start-up from flags and environment.

Each setting is declared once, as a field of :class:`Settings` carrying its flag,
variable, help and parser; argparse, the README's table and the deployment checks
are all derived from those declarations. Everything below the entry point
receives a :class:`Settings` and never reads the environment itself, so a test can
build any configuration in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2.extensions

from memstore_server.auth import read_keys_file

DEFAULT_LISTEN = "127.0.0.1:50051"
# gRPC's own default limit, which clients also apply to what they receive.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A single user at its largest must fit in one message: 64 KiB of metadata as JSON can take
# over five times that as a protobuf Struct (a list of small numbers: 2 bytes each in JSON, 11).
MIN_MAX_MESSAGE_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A setting is malformed; the message names the flag and the variable."""


@dataclass(frozen=True)
class Option:
    """How the command line and the environment spell one setting."""

    flag: str
    env: str
    help: str
    # Turns the flag's or variable's text into the field's value; argparse reports its errors.
    parse: Callable[[str], Any] = str
    # A source of credentials: its variable set but empty is parsed (and refused), not taken as
    # unset, because unset means authentication off.
    credential: bool = False

    @property
    def names(self) -> str:
        return f"{self.flag} / {self.env}"


def _setting(
    default: Any,
    flag: str,
    help: str,
    parse: Callable[[str], Any] = str,
    *,
    credential: bool = False,
    **kwargs: Any,
) -> Any:
    """A Settings field exposed as ``flag`` and as MEMSTORE_<FLAG>."""
    env = "MEMSTORE_" + flag.removeprefix("--").replace("-", "_").upper()
    option = Option(flag, env, help, parse, credential)
    return dataclasses.field(default=default, metadata={"option": option}, **kwargs)


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _optional_text(text: str) -> str | None:
    return text or None


def _switch(text: str) -> bool:
    """A switch: the bare flag, or true/false (1/0, yes/no) from the flag or its variable."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _on_off(text: str) -> bool:
    """``on`` or ``off`` (true/false, 1/0 and yes/no are taken too)."""
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


# The parsers of credential settings refuse empty text (see Option.credential).
def _key_list(text: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    if not keys:
        raise argparse.ArgumentTypeError("no key in it: give at least one key")
    return keys


def _keys_file(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: name a file of keys")
    return Path(text)


def _secret(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give the secret")
    return text


def _refusing_empty(option: Option) -> Callable[[str], Any]:
    """``option.parse``, its refusal naming both spellings: the text may have come from the variable."""

    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(
                f"{error}, or leave {option.names} unset; given but empty, it would turn authentication off"
            ) from error

    return parse


@dataclass(frozen=True)
class Settings:
    """One process's configuration, validated when built."""

    listen: str = _setting(DEFAULT_LISTEN, "--listen", "address to serve gRPC on, HOST:PORT")
    database_url: str | None = _setting(
        None,
        "--database-url",
        "PostgreSQL URL or key=value string; unset: an embedded PostgreSQL under --data-dir",
        _optional_text,
    )
    read_database_url: str | None = _setting(
        None,
        "--read-database-url",
        "PostgreSQL streaming replica (URL or key=value) for the bulk reads: listings, streams; "
        "unset: everything reads the primary",
        _optional_text,
    )
    data_dir: Path = _setting(
        Path(".memstore"), "--data-dir", "where the embedded PostgreSQL keeps its data", Path
    )
    log_level: str = _setting("INFO", "--log-level", "DEBUG, INFO, WARNING or ERROR", str.upper)
    log_format: str = _setting(
        "text", "--log-format", "text (for people) or json (one object per line)", str.lower
    )
    metrics_listen: str | None = _setting(
        None,
        "--metrics-listen",
        "HOST:PORT to serve Prometheus metrics on (/metrics); unset: no metrics endpoint",
        _optional_text,
    )
    workers: int = _setting(1, "--workers", "server processes sharing the port, one core each", int)
    db_pool_size: int = _setting(
        16, "--db-pool-size", "pooled database connections, each used by one query at a time", int
    )
    db_pool_timeout: float = _setting(
        5.0, "--db-pool-timeout", "seconds a call waits for a free connection before UNAVAILABLE", float
    )
    read_db_pool_size: int | None = _setting(
        None,
        "--read-db-pool-size",
        "pooled connections to --read-database-url; unset: the same as --db-pool-size",
        _optional_int,
    )
    max_replica_lag: float = _setting(
        10.0,
        "--max-replica-lag",
        "seconds the replica may be behind before bulk reads go to the primary until it catches up",
        float,
    )
    prepared_statements: bool = _setting(
        True,
        "--prepared-statements",
        "on: the hot reads are PREPAREd once per connection; off: plain parameterised SQL "
        "(behind PgBouncer in transaction mode)",
        _on_off,
    )
    max_concurrent_streams: int = _setting(
        1000,
        "--max-concurrent-streams",
        "server streams open at once, per process; beyond it RESOURCE_EXHAUSTED (TOO_MANY_STREAMS)",
        int,
    )
    stream_stall_timeout: float = _setting(
        30.0,
        "--stream-stall-timeout",
        "seconds a stream may wait on a client that reads nothing before it is cancelled",
        float,
    )
    stream_memory: int = _setting(
        64 * 1024 * 1024,
        "--stream-memory",
        "bytes response streams may hold read and not yet sent, per process; beyond it a stream "
        "that holds nothing waits before its next read",
        int,
    )
    watch_heartbeat: float = _setting(
        5.0,
        "--watch-heartbeat",
        "seconds between WatchUsers messages at most while nothing changes (each with a fresh resume token)",
        float,
    )
    change_retention: float = _setting(
        7 * 24 * 3600.0,
        "--change-retention",
        "seconds changes are kept for WatchUsers resume tokens (default 7 days); older ones are deleted",
        float,
    )
    grace_period: float = _setting(10.0, "--grace-period", "seconds in-flight RPCs get on shutdown", float)
    max_message_bytes: int = _setting(
        DEFAULT_MAX_MESSAGE_BYTES,
        "--max-message-bytes",
        "largest gRPC message received or sent; pages and streamed chunks are cut to fit",
        int,
    )
    health_interval: float = _setting(
        2.0, "--health-interval", "seconds between the database probes behind the health service", float
    )
    api_keys: tuple[str, ...] = _setting(
        (),
        "--api-keys",
        "comma-separated API keys; any key or --jwt-secret turns auth on",
        _key_list,
        credential=True,
        repr=False,
    )
    api_keys_file: Path | None = _setting(
        None,
        "--api-keys-file",
        "file of API keys, one per line, each a key or sha256:<hex digest>",
        _keys_file,
        credential=True,
    )
    jwt_secret: str | None = _setting(
        None,
        "--jwt-secret",
        "secret that HS256 bearer JWTs must be signed with",
        _secret,
        credential=True,
        repr=False,
    )
    jwt_audience: str | None = _setting(
        None, "--jwt-audience", "when set, a JWT's aud claim must include it", _optional_text
    )
    jwt_issuer: str | None = _setting(
        None, "--jwt-issuer", "when set, a JWT's iss claim must be it", _optional_text
    )
    jwt_allow_no_exp: bool = _setting(
        False, "--jwt-allow-no-exp", "accept JWTs without an exp claim (they never expire)", _switch
    )
    tls_cert: Path | None = _setting(None, "--tls-cert", "PEM certificate chain: serve TLS", _optional_path)
    tls_key: Path | None = _setting(None, "--tls-key", "PEM private key of --tls-cert", _optional_path)
    tls_client_ca: Path | None = _setting(
        None, "--tls-client-ca", "PEM CA that client certificates must chain to (mTLS)", _optional_path
    )
    # Raw channel arguments for tests and embedders; no flag.
    extra_grpc_options: tuple[tuple[str, int | str], ...] = ()

    def __post_init__(self) -> None:
        check_address(OPTIONS["listen"].names, self.listen)
        if self.metrics_listen is not None:
            check_address(OPTIONS["metrics_listen"].names, self.metrics_listen)
        for name in ("database_url", "read_database_url"):
            if getattr(self, name) is not None:
                _check_database_url(name, getattr(self, name))
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"{OPTIONS['log_format'].names} must be text or json, got {self.log_format!r}")
        if logging.getLevelName(self.log_level.upper()) == f"Level {self.log_level.upper()}":
            raise ConfigError(f"{OPTIONS['log_level'].names}: unknown level {self.log_level!r}")
        self._check_limits()
        self._check_tls()

    @property
    def read_pool_size(self) -> int:
        """Connections of the replica's pool: --read-db-pool-size, else as many as the primary's."""
        return self.db_pool_size if self.read_db_pool_size is None else self.read_db_pool_size

    def _check_limits(self) -> None:
        for name in ("workers", "db_pool_size", "max_concurrent_streams", "stream_memory"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{OPTIONS[name].names} must be at least 1")
        if self.read_db_pool_size is not None and self.read_db_pool_size < 1:
            raise ConfigError(f"{OPTIONS['read_db_pool_size'].names} must be at least 1")
        for name in (
            "db_pool_timeout",
            "stream_stall_timeout",
            "health_interval",
            "max_replica_lag",
            "watch_heartbeat",
            "change_retention",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{OPTIONS[name].names} must be above 0 seconds")
        if not self.grace_period >= 0:
            raise ConfigError(f"{OPTIONS['grace_period'].names} must be 0 seconds or more")
        if self.workers > 1 and self.listen.endswith(":0"):
            raise ConfigError("--workers above 1 needs a fixed port: every worker binds the same one")
        if self.max_message_bytes < MIN_MAX_MESSAGE_BYTES:
            raise ConfigError(
                f"{OPTIONS['max_message_bytes'].names} must be at least {MIN_MAX_MESSAGE_BYTES}"
                " (one largest user)"
            )

    def _check_tls(self) -> None:
        if self.jwt_secret is not None and not self.jwt_secret.strip():
            raise ConfigError(f"{OPTIONS['jwt_secret'].names} is empty; that would turn authentication off")
        if any(not key.strip() for key in self.api_keys):
            raise ConfigError(f"{OPTIONS['api_keys'].names}: a key is empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        jwt_only = ("jwt_audience", "jwt_issuer", "jwt_allow_no_exp")
        if self.jwt_secret is None and any(getattr(self, name) for name in jwt_only):
            raise ConfigError("--jwt-audience, --jwt-issuer and --jwt-allow-no-exp need --jwt-secret")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{OPTIONS[name].names}: no such file {str(path)!r}")
        if self.api_keys_file is not None:
            self._check_keys_file(self.api_keys_file)

    @staticmethod
    def _check_keys_file(path: Path) -> None:
        """A keys file must hold a key: an empty one would quietly turn authentication off."""
        names = OPTIONS["api_keys_file"].names
        try:
            keys = read_keys_file(path)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(f"{names}: {error}") from error
        if not keys:
            raise ConfigError(
                f"{names}: {str(path)!r} holds no key (only blank or # lines); "
                "add a key or a sha256:<digest>, or leave the setting unset"
            )


# Every setting that has a flag, by field name, in --help order.
OPTIONS: dict[str, Option] = {
    field.name: field.metadata["option"]
    for field in dataclasses.fields(Settings)
    if "option" in field.metadata
}
ENVIRONMENT_VARIABLES = frozenset(option.env for option in OPTIONS.values())
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Settings)}


def default_text(name: str) -> str:
    """A setting's default as a person would type it; empty when it has none."""
    value = _DEFAULTS[name]
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        if OPTIONS[name].parse is _on_off:
            return "on" if value else "off"
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def check_address(names: str, address: str) -> None:
    """Refuse ``address`` unless it is HOST:PORT with a port number; ``names`` spells the setting."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{names} must be HOST:PORT, got {address!r}")


def _check_database_url(name: str, url: str) -> None:
    try:
        psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as error:
        raise ConfigError(
            f"{OPTIONS[name].names} must be a postgresql:// URL or a libpq key=value string"
        ) from error


def add_arguments(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    only: Collection[str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """Declare every flag (or those of the settings named in ``only``), each defaulting to
    its MEMSTORE_* variable, then to the built-in default. ``helps`` rewords a setting's help,
    by field name, for a command that uses it differently (healthcheck asks --listen).

    A variable's text goes through the same parser as the flag's, so a bad value from
    the environment is rejected exactly as the same value given as a flag would be.
    """
    for name, option in OPTIONS.items():
        if only is not None and name not in only:
            continue
        shown = default_text(name)
        described = (helps or {}).get(name, option.help)
        default: Any = _DEFAULTS[name]
        text = environ.get(option.env)
        if text or (text is not None and option.credential):
            default = text  # a string: argparse parses it with option.parse
        switch: dict[str, Any] = {"nargs": "?", "const": True} if option.parse is _switch else {}
        parser.add_argument(
            option.flag,
            dest=name,
            type=_refusing_empty(option) if option.credential else option.parse,
            default=default,
            help=f"{described} (env {option.env}{'; default ' + shown if shown else ''})",
            **switch,
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build the validated Settings from parsed flags."""
    return Settings(**{name: getattr(args, name) for name in OPTIONS})
