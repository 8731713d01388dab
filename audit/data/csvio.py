"""Reading the CSV files users hand us (annotations, manifests, labels), with errors that name the file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from audit.errors import AuditInputError


def read_csv_rows(path: str | Path, what: str = "CSV", required: Sequence[str] = (),
                  allow_empty: bool = False) -> list[dict[str, str]]:
    """Rows as dicts keyed by whitespace-stripped column names (a BOM is dropped). Unreadable files, missing
    columns and (unless allowed) a file without rows are `AuditInputError`s naming the file; `what` says which
    file it is meant to be ("manifest", "labels CSV", ...)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise AuditInputError(path, f"empty {what} (no header)")
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            columns = reader.fieldnames
            rows = list(reader)
    except FileNotFoundError:
        raise AuditInputError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AuditInputError(path, f"unreadable {what} ({err})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise AuditInputError(path, f"missing column(s): {', '.join(missing)}")
    if not rows and not allow_empty:
        raise AuditInputError(path, f"{what} has no rows")
    return rows
