"""The report's JSON Schema (shipped in the package) and the fields that legitimately differ between two runs."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_VERSION = "1.0"

# what changes between two runs of the same command with the same seed: when things happened and how long they took
VOLATILE_TOP = ("created_at",)
VOLATILE_PROVENANCE = ("started_at", "finished_at")
VOLATILE_STAGE = ("started_at", "seconds")
# inside a stage's details, by convention: durations (`seconds`) and whether something came from the data cache
# (`from_cache`, `*_from_cache`) — true facts about this run, not results
VOLATILE_DETAIL_KEYS = ("seconds", "from_cache")
VOLATILE_DETAIL_SUFFIX = "_from_cache"
VOLATILE_DETAIL_TIME = ("seconds_", "_seconds")  # durations inside details: seconds_for_..., train_seconds


def _strip_detail_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_detail_keys(v) for k, v in value.items()
                if k not in VOLATILE_DETAIL_KEYS and not str(k).endswith(VOLATILE_DETAIL_SUFFIX)
                and not str(k).startswith(VOLATILE_DETAIL_TIME[0]) and not str(k).endswith(VOLATILE_DETAIL_TIME[1])}
    if isinstance(value, list):
        return [_strip_detail_keys(v) for v in value]
    return value


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    return json.loads((resources.files("reports") / "schema" / "report.schema.json").read_text())


def validation_errors(report: dict[str, Any]) -> list[str]:
    """Every way `report` breaks the schema, as 'path: message' lines (empty when valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(report_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))]


def check_report(report: dict[str, Any]) -> None:
    """Raise ValueError when the report breaks its schema (the suite never writes such a report)."""
    errors = validation_errors(report)
    if errors:
        raise ValueError(f"report.json breaks its schema ({len(errors)} problem(s)); first: {errors[0]}")


def strip_volatile(report: dict[str, Any]) -> dict[str, Any]:
    """A copy without the timestamps, durations and cache hits, for comparing two runs."""
    out = copy.deepcopy(report)
    for key in VOLATILE_TOP:
        out.pop(key, None)
    for key in VOLATILE_PROVENANCE:
        out.get("provenance", {}).pop(key, None)
    for stage in out.get("stages", {}).values():
        for key in VOLATILE_STAGE:
            stage.pop(key, None)
        if "details" in stage:
            stage["details"] = _strip_detail_keys(stage["details"])
    return out
