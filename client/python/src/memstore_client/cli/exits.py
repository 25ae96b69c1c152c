"""The memstore command's exit codes, and the one exception that carries one.

Pipelines branch on them: a bad input line needs a person, an unreachable server
needs a retry later, an expired resume token needs a fresh export.
"""

from __future__ import annotations

OK = 0
# The input (a line or row of an import, a file that cannot be read or written) is at fault.
DATA_ERROR = 1
# argparse's own code for a bad command line; also a format this installation cannot handle.
USAGE_ERROR = 2
# The server answered an error, or could not be reached.
SERVER_ERROR = 3
# watch --since: the token is older than the server's change retention; export again.
TOKEN_EXPIRED = 4
# Ctrl-C (SIGINT) and SIGTERM: 128 + the signal's number, as shells report them.
INTERRUPTED = 130
TERMINATED = 143
# The reader of stdout went away (`memstore export | head`): as a tool killed by SIGPIPE.
BROKEN_PIPE = 141

EPILOG = """\
exit codes:
  0    done
  1    bad input (an invalid line or row, with its number and field) or a file that
       cannot be read or written
  2    usage error (bad options; Parquet without pyarrow installed)
  3    the server answered an error or could not be reached
  4    watch --since: the resume token has expired (export again, then watch from the new manifest)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): no partial --out file is left behind
  141  the reader of stdout went away (as for a tool killed by SIGPIPE)

environment:
  MEMSTORE_ADDR    default of --address (else localhost:50051)
  MEMSTORE_TOKEN   default of --token
  MEMSTORE_TLS_CA  default of --tls-ca
"""


class CommandError(Exception):
    """Ends the command with ``message`` on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup runs as for Ctrl-C."""
