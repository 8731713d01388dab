"""Errors the CLI turns into one line on stderr and exit code 2.

Anything raised as an `AuditInputError` is the user's input being wrong (a file, a folder, a config key);
the message must name the thing and the problem, because the CLI prints only that line.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


class AuditError(Exception):
    """Base class for errors the suite reports without a traceback."""

    exit_code = EXIT_ERROR


class AuditInputError(AuditError):
    """Bad input: a missing/unreadable file, a wrong column, an unknown config key."""

    def __init__(self, where: str | Path | None, problem: str):
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)
