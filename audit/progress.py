"""Progress bars on long work; quiet when stderr is not a terminal (CI logs) unless SYNTH_AUDIT_PROGRESS=on."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    mode = os.environ.get("SYNTH_AUDIT_PROGRESS", "auto")
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def progress_bar(iterable=None, total: int | None = None, desc: str | None = None, **kwargs):
    return tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(), leave=False,
                dynamic_ncols=True, **kwargs)
