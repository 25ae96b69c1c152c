"""Reading PostgreSQL's integrity errors: which constraint a failed write broke."""

from __future__ import annotations

import peewee


def violated_constraint(error: peewee.IntegrityError) -> str | None:
    """The name of the constraint behind ``error``, from the driver's diagnostics."""
    original = getattr(error, "orig", None) or (error.args[0] if error.args else None)
    diag = getattr(original, "diag", None)
    return getattr(diag, "constraint_name", None)
