"""Paths named inside a user's files (manifests, annotation CSVs) must stay inside the dataset's folder.

A manifest row reading `../../home/me/.ssh/id_rsa`, `/etc/passwd` or a symlink pointing out of the folder would
otherwise make the suite read (and, through exports and contact sheets, copy) files the user never meant to
hand over. The root itself is resolved first, so a dataset folder that *is* a symlink works; anything inside it
must resolve to a place under it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from audit.errors import AuditInputError


def _line(line: int | None) -> str:
    return f"line {line}: " if line is not None else ""


def inside_root(root: str | Path, relative: str, where: str | Path, line: int | None = None,
                column: str = "path") -> Path:
    """`root / relative`, refused (naming `where` and the line) unless it stays inside `root` once resolved.

    Refused: absolute paths (POSIX or Windows drive/UNC), any `..` component, NUL bytes, and paths whose
    resolution (symlinks followed) leaves the root."""
    text = relative.strip()
    prefix = _line(line)
    if not text:
        raise AuditInputError(where, f"{prefix}empty '{column}'")
    if "\0" in text:
        raise AuditInputError(where, f"{prefix}'{column}' contains a NUL byte")
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or text.startswith("\\"):
        raise AuditInputError(where, f"{prefix}'{column}' {text!r} is an absolute path; paths must be relative "
                                     f"to the dataset folder {root}")
    if ".." in posix.parts or ".." in windows.parts:
        raise AuditInputError(where, f"{prefix}'{column}' {text!r} leaves the dataset folder {root} ('..')")
    root_resolved = Path(os.path.realpath(root))
    candidate = Path(root) / text
    resolved = Path(os.path.realpath(candidate))
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise AuditInputError(where, f"{prefix}'{column}' {text!r} resolves outside the dataset folder {root} "
                                     f"(a symlink pointing out of it)")
    return candidate


def check_inside(root: str | Path, path: str | Path, where: str | Path | None = None) -> Path:
    """A file found *by listing* `root` (no manifest): refused when it is a symlink out of the root."""
    root_resolved = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(path))
    if root_resolved not in resolved.parents:
        raise AuditInputError(where or path, f"resolves outside the folder {root} (a symlink pointing out of it)")
    return Path(path)
