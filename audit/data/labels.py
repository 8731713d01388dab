"""Parsing label text from users' CSVs: strict, so a typo is an error naming the file and line, never a silently
different label ("BI-RADS 12" used to read as BI-RADS 1).

`parse_finding_list` reads VinDr's Python-list notation (`"['Mass', 'Suspicious Calcification']"`) with
`ast.literal_eval` only after checking the syntax tree holds nothing but a list/tuple of string constants — no
names, calls, operators or nested containers are ever evaluated, and the text length is bounded first (the
parser itself is recursive).
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

from audit.errors import AuditInputError

MAX_LABEL_CHARS = 10_000
_BIRADS = re.compile(r"^(?:BI-?RADS)?\s*([0-6])(?:\.0)?\s*([ABC])?$", re.IGNORECASE)
_DENSITY = re.compile(r"^(?:DENSITY)?\s*([A-D])$", re.IGNORECASE)
LATERALITIES = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}


def _on(column: str, line: int | None) -> str:
    return f"{column} on line {line}" if line is not None else column


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def parse_birads(text: str | None, where: str | Path | None, column: str = "birads",
                 line: int | None = None) -> int | None:
    """'' → None; 'BI-RADS 4', 'BIRADS 4', '4', '4.0', 'BI-RADS 4A' → 4 (0-6); anything else is an error."""
    value = (text or "").strip()
    if not value:
        return None
    match = _BIRADS.match(value)
    if not match:
        raise AuditInputError(where, f"{_on(column, line)} is {_short(value)}, expected 'BI-RADS n' "
                                     "or n with n = 0-6")
    return int(match.group(1))


def parse_density(text: str | None, where: str | Path | None, column: str = "density",
                  line: int | None = None) -> str | None:
    """'' → None; 'DENSITY C' or 'C' → 'C' (A-D); anything else is an error."""
    value = (text or "").strip()
    if not value:
        return None
    match = _DENSITY.match(value)
    if not match:
        raise AuditInputError(where, f"{_on(column, line)} is {_short(value)}, expected "
                                     "'DENSITY X' or X with X = A-D")
    return match.group(1).upper()


def parse_laterality(text: str | None, where: str | Path | None, column: str = "laterality",
                     line: int | None = None) -> str | None:
    """'' → None; L/R (or LEFT/RIGHT, any case) → 'L'/'R'; anything else is an error."""
    value = (text or "").strip().upper()
    if not value:
        return None
    if value not in LATERALITIES:
        raise AuditInputError(where, f"{_on(column, line)} is {_short(value)}, expected L or R")
    return LATERALITIES[value]


def parse_optional_int(text: str | None, where: str | Path | None, column: str, line: int | None = None) -> int | None:
    """'' → None; an integer (or a float with no fraction, '3.0') → int; NaN, inf, fractions, words: an error."""
    value = (text or "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != math.floor(number):
        raise AuditInputError(where, f"{_on(column, line)} is {_short(value)}, not an integer")
    return int(number)


def _is_string_list(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def parse_finding_list(text: str | None, where: str | Path | None, column: str = "finding_categories",
                       line: int | None = None) -> list[str]:
    """"['Mass', 'Asymmetry']" (or a bare quoted string, or '') → the category names, stripped."""
    value = (text or "").strip()
    if not value:
        return []
    problem = f"{_on(column, line)} is not a list of quoted names: {_short(value)}"
    if len(value) > MAX_LABEL_CHARS:
        raise AuditInputError(where, f"{_on(column, line)} is {len(value)} characters long "
                                     f"(at most {MAX_LABEL_CHARS})")
    try:
        tree = ast.parse(value, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise AuditInputError(where, problem) from None
    if not _is_string_list(tree.body):
        raise AuditInputError(where, problem)
    parsed = ast.literal_eval(tree.body)  # only string constants in a list/tuple reach this line
    items = [parsed] if isinstance(parsed, str) else list(parsed)
    return [item.strip() for item in items if item.strip()]


def split_findings(text: str | None) -> tuple[str, ...]:
    """The folder manifests' `;`-separated findings."""
    return tuple(f.strip() for f in (text or "").split(";") if f.strip())
