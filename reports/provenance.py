"""Where a report came from: the suite's version and commit, the packages it ran on, the machine's Python."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

SUITE = "synth-audit"
PACKAGES = ("numpy", "scipy", "torch", "torchvision", "scikit-learn", "scikit-image", "diffusers", "monai", "timm",
            "torchmetrics", "pytorch-metric-learning", "pydicom", "nibabel", "pydantic", "faiss-cpu", "Jinja2",
            "jsonschema", "matplotlib")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout the suite runs from (None for an installed wheel or without git)."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def suite_info() -> dict[str, str | None]:
    return {"name": SUITE, "version": package_version(SUITE) or "unknown", "git_commit": git_commit()}


def environment() -> dict[str, object]:
    return {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "packages": {name: package_version(name) for name in PACKAGES}}
