"""The CLI's one mapping from errors to what the operator sees: a line on stderr and an exit code.

Every AforoError (schemas/errors.py) prints its message and exits with its `exit_code`; the few
library errors an operator causes (a database that is down or not migrated) are translated
here first. Anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg

from schemas.errors import AforoError, Unavailable


class NotMigrated(Unavailable):
    code = "not_migrated"


def operator_error(exc: BaseException) -> AforoError | None:
    """The AforoError an exception stands for, or None when it is not the operator's to fix."""
    if isinstance(exc, AforoError):
        return exc
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return NotMigrated(f"the database has no Aforo schema yet ({exc.diag.message_primary}): "
                           "run `aforo migrate`")
    # no SQLSTATE: the client could not connect or lost the connection; 08: connection
    # exception; 57P: the server is shutting down or restarting
    if isinstance(exc, psycopg.OperationalError) and (exc.sqlstate is None or exc.sqlstate[:2] == "08"
                                                     or exc.sqlstate[:3] == "57P"):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Unavailable(f"cannot reach Postgres: {first}")
    return None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around writing a file the operator named: a directory that does not exist or may not be
    written is theirs to fix, so it is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:  # not about a file: a bug, with its traceback
            raise
        raise AforoError(f"cannot write {path}: {exc.strerror}") from exc


class Failure(click.ClickException):
    """An AforoError as click shows it: `Error: <message>` on stderr (and its details, if any),
    the error's exit code."""

    def __init__(self, error: AforoError):
        super().__init__("\n".join((str(error), *error.details)))
        self.exit_code = error.exit_code


class AforoGroup(click.Group):
    """The `aforo` group: maps the errors of every subcommand (and sub-group) in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            error = operator_error(exc)
            if error is None:
                raise
            raise Failure(error) from exc
