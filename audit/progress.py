"""Progress bars that stay quiet when output is not a terminal (CI logs) unless asked."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str | None = None, **kwargs):
    disable = os.environ.get("SYNTH_AUDIT_PROGRESS", "auto") == "off" or (
        os.environ.get("SYNTH_AUDIT_PROGRESS", "auto") == "auto" and not sys.stderr.isatty())
    return tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
