"""Errors the CLI turns into one line on stderr and exit code 2.

Anything raised as an `AuditInputError` is the user's input being wrong (a file, a folder, a config key);
the message must name the thing and the problem, because the CLI prints only that line.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control_characters(text: str) -> str:
    """`text` with control characters written as escapes (newline → `\\n`, others `\\xNN` / `\\uNNNN`), so that a
    file name holding a newline cannot split the one error line or forge a second one. Printable non-ASCII
    letters stay as they are (a name like `Müller.png` is shown as written)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):  # C0/C1 controls, U+2028/U+2029 line breaks
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class AuditError(Exception):
    """Base class for errors the suite reports without a traceback."""

    exit_code = EXIT_ERROR


class AuditInputError(AuditError):
    """Bad input: a missing/unreadable file, a wrong column, an unknown config key.

    `where` and `problem` keep the raw text (callers compare paths); the message — what the CLI prints — has
    their control characters escaped, so it is always one line."""

    def __init__(self, where: str | Path | None, problem: str):
        self.where = str(where) if where is not None else None
        self.problem = problem
        shown = escape_control_characters(problem)
        super().__init__(f"{escape_control_characters(self.where)}: {shown}" if self.where else shown)
