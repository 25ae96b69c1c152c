"""How every subcommand reaches the server: --address, --token, --tls-ca (and their variables).

The channel is built with the client library's own options (read retries,
keepalive for long streams) and the same bearer-token metadata, so the command
behaves on the wire as MemstoreClient does.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from memstore.v1 import users_pb2_grpc

from memstore_client._transport import call_metadata, channel_options
from memstore_client.cli.exits import SERVER_ERROR, USAGE_ERROR, CommandError
from memstore_client.errors import MemstoreError, translate

DEFAULT_ADDRESS = "localhost:50051"
# Stream messages and batch responses are cut by the server to its own limit (4 MiB by
# default, configurable upwards); accept whatever it was configured to send.
_MAX_RECEIVE = 256 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The connection options every subcommand takes."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=environ.get("MEMSTORE_ADDR") or DEFAULT_ADDRESS,
        help="server address, HOST:PORT (default: $MEMSTORE_ADDR, else %(default)s)",
    )
    group.add_argument(
        "--token",
        default=environ.get("MEMSTORE_TOKEN") or None,
        help="API key or JWT sent as 'authorization: Bearer TOKEN' (default: $MEMSTORE_TOKEN)",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=environ.get("MEMSTORE_TLS_CA") or None,
        metavar="PEM",
        help="speak TLS, trusting this CA certificate file (default: $MEMSTORE_TLS_CA; unset: plaintext)",
    )
    group.add_argument(
        "--tls", action="store_true", help="speak TLS, trusting the system's root certificates"
    )


@dataclass
class Connection:
    """An open channel to memstore with the metadata every call carries."""

    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]

    @property
    def users(self) -> users_pb2_grpc.UserServiceStub:
        return users_pb2_grpc.UserServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def connect(args: argparse.Namespace) -> Connection:
    """A channel to ``args.address``, in TLS when --tls-ca or --tls is given."""
    options = channel_options(
        [("grpc.max_receive_message_length", _MAX_RECEIVE), ("grpc.max_send_message_length", _MAX_RECEIVE)]
    )
    credentials = _credentials(args.tls_ca, args.tls)
    channel = (
        grpc.secure_channel(args.address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(args.address, options=options)
    )
    return Connection(channel, call_metadata(args.token))


def _credentials(ca_file: Path | None, system_roots: bool) -> grpc.ChannelCredentials | None:
    if ca_file is not None:
        try:
            return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        except OSError as error:
            raise CommandError(f"--tls-ca: cannot read {ca_file}: {error.strerror}", USAGE_ERROR) from None
    return grpc.ssl_channel_credentials() if system_roots else None


def server_failure(error: grpc.RpcError | MemstoreError, doing: str) -> CommandError:
    """A failed call as the command reports it: what it was doing, the status, the reason."""
    failure = translate(error) if isinstance(error, grpc.RpcError) else error
    reason = f" [{failure.reason}]" if failure.reason else ""
    return CommandError(f"{doing}: {failure.code.name}{reason}: {failure.message}", SERVER_ERROR)
