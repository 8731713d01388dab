import os

import pytest

os.environ.setdefault("SYNTH_AUDIT_PROGRESS", "off")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own preprocessing cache, so no test reads another's entries."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SYNTH_AUDIT_CACHE", str(cache))
    return cache
