"""Server-side prepared statements for the hottest reads.

PostgreSQL parses and plans a statement sent as text every time; a prepared one
is planned once per connection and then only executed. On the point read that
GetUser makes, that is CPU saved in PostgreSQL on every call, on machines where
PostgreSQL shares the cores with the server. Each pooled connection remembers
which statements it has prepared (database.Connection.prepared).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee
from peewee import __exception_wrapper__ as as_peewee_errors  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Prepared:
    """A statement prepared on first use on each connection, then executed by name."""

    name: str
    parameter_types: tuple[str, ...]
    sql: str  # with $1, $2... placeholders

    def execute(self, db: peewee.Database, params: tuple[Any, ...], cursor: Any = None) -> Any:
        """Run it on ``db``'s current connection (inside database.connection()); returns the cursor
        (``cursor``, when given: one set up to read its results in a way of its own).

        With prepared statements off (a pooler in transaction mode hands each
        transaction any server connection, where a statement prepared on another
        does not exist), it is sent as plain parameterised SQL instead.
        """
        if not getattr(db, "prepared_statements", True):
            return _run(db, self.text, params, cursor)
        prepared: set[str] = db.connection().prepared  # a database.Connection
        if self.name not in prepared:
            db.execute_sql(f"PREPARE {self.name} ({', '.join(self.parameter_types)}) AS {self.sql}")
            prepared.add(self.name)
        placeholders = ", ".join(["%s"] * len(params))
        return _run(db, f"EXECUTE {self.name} ({placeholders})", params, cursor)

    @property
    def text(self) -> str:
        """The statement with %s placeholders, for running (or EXPLAINing) it unprepared."""
        text = self.sql
        for number in range(len(self.parameter_types), 0, -1):
            text = text.replace(f"${number}", "%s")
        return text


def _run(db: peewee.Database, sql: str, params: tuple[Any, ...], cursor: Any) -> Any:
    if cursor is None:
        return db.execute_sql(sql, params)
    with as_peewee_errors:  # driver errors become peewee's, as in execute_sql
        cursor.execute(sql, params)
    return cursor
