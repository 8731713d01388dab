"""Reading the CSV files users hand us (annotations, manifests, labels), with errors that name the file.

Every row remembers the line it starts on (`CsvRows.lines`), so a problem in row data is reported as
`file: line N: ...` — the number an editor shows (the header is line 1).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from audit.errors import AuditInputError


class CsvRows(list):
    """A list of row dicts that also knows each row's first line in the file."""

    def __init__(self, rows: Sequence[dict[str, str]] = (), lines: Sequence[int] = (), path: Path | None = None):
        super().__init__(rows)
        self.lines = list(lines)
        self.path = path

    def line(self, index: int) -> int | None:
        return self.lines[index] if 0 <= index < len(self.lines) else None


def read_csv_rows(path: str | Path, what: str = "CSV", required: Sequence[str] = (),
                  allow_empty: bool = False) -> CsvRows:
    """Rows as dicts keyed by whitespace-stripped column names (a BOM is dropped). Unreadable files, missing or
    repeated columns, rows with more or fewer fields than the header and (unless allowed) a file without rows are
    `AuditInputError`s naming the file (and the line); `what` says which file it is meant to be ("manifest",
    "labels CSV", ...)."""
    path = Path(path)
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise AuditInputError(path, f"empty {what} (no header)")
            columns = [name.strip() for name in header]
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if repeated:
                raise AuditInputError(path, f"column(s) named twice in the header: {_names(repeated)}")
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                if not fields or (len(fields) == 1 and not fields[0].strip() and len(columns) > 1):
                    continue  # blank line
                if len(fields) != len(columns):
                    raise AuditInputError(path, f"line {start}: {len(fields)} fields where the header has "
                                                f"{len(columns)} ({what} columns: {_names(columns)})")
                rows.append(dict(zip(columns, fields)))
                lines.append(start)
    except FileNotFoundError:
        raise AuditInputError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise AuditInputError(path, f"{what} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AuditInputError(path, f"unreadable {what} ({_first_line(err)})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise AuditInputError(path, f"missing column(s): {', '.join(missing)}")  # names from the code, not the file
    if not rows and not allow_empty:
        raise AuditInputError(path, f"{what} has no rows")
    return CsvRows(rows, lines, path)


def check_unique(rows: CsvRows, column: str, what: str = "id") -> None:
    """Refuse a repeated value in `column` (e.g. two rows with one image id), naming both lines."""
    first_seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        value = (row.get(column) or "").strip()
        if not value:
            continue
        if value in first_seen:
            raise AuditInputError(rows.path, f"line {rows.line(i)}: duplicate {what} {value[:80]!r} "
                                             f"(first on line {rows.line(first_seen[value])})")
        first_seen[value] = i


def _names(columns: Sequence[str], limit: int = 12) -> str:
    """Column names as the message shows them: quoted (a newline or comma inside a name stays visible and the
    error stays one line), at most `limit` of them."""
    shown = ", ".join(repr(c[:40]) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]
