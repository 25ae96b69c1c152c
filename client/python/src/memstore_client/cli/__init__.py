"""The ``memstore`` command: export, import and watch the users of a memstore server.

    memstore export --format parquet --out users.parquet
    memstore import users.parquet --skip-existing
    memstore watch --since-manifest users.parquet.manifest.json

Each subcommand is a module (export, importing, watch); this one parses the
command line, connects, and turns every way a command can end into its exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from types import FrameType

from memstore_client import __version__
from memstore_client.cli import connection, exits, export, importing, watch
from memstore_client.cli.exits import CommandError, Terminated

Runner = Callable[[argparse.Namespace, connection.Connection], int]
_RUNNERS: dict[str, Runner] = {"export": export.run, "import": importing.run, "watch": watch.run}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="memstore",
        description="Export, import and watch the users of a memstore server.",
        epilog=exits.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"memstore {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (export, importing, watch):
        sub = module.add_parser(commands)
        sub.description = textwrap.fill(sub.description or "", 88)
        sub.epilog = exits.EPILOG
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        connection.add_arguments(sub, os.environ)
    return root


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        conn = connection.connect(args)
        try:
            return _RUNNERS[args.command](args, conn)
        finally:
            conn.close()
    except CommandError as error:
        print(f"memstore {args.command}: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"memstore {args.command}: interrupted", file=sys.stderr)
        return exits.INTERRUPTED
    except Terminated:
        print(f"memstore {args.command}: terminated", file=sys.stderr)
        return exits.TERMINATED
    except BrokenPipeError:
        # The reader of stdout went away (`memstore export | head`): stop quietly, as other tools do.
        _silence_stdout()
        return exits.BROKEN_PIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
