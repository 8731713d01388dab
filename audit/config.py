"""Typed configuration: YAML presets shipped in `configs/`, validated into pydantic models.

An unknown key or a wrong type is an `AuditInputError` naming the key (e.g. `preprocess.shape`), so a typo in a
preset never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from audit.errors import AuditInputError

PRESET_KINDS = ("datasets", "generators", "gates")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessConfig(StrictModel):
    """How raw pixels become float32 [0, 1] arrays of one shape."""

    shape: tuple[int, ...]  # (H, W) or (D, H, W)
    # 2D mammography
    crop_to_breast: bool = True  # crop to the largest foreground component
    flip_right_to_left: bool = True  # mirror right breasts so every breast faces the same way
    skip_for_processing: bool = True  # VinDr viewer rule: raw "FOR PROCESSING" images are not for display
    # intensity: percentiles inside the foreground; None = the DICOM window / full range as stored
    intensity_percentiles: tuple[float, float] | None = None
    # 3D volumes
    spacing_mm: tuple[float, float, float] | None = None  # resample to this voxel size first (None: keep)
    canonical_orientation: bool = True  # reorient to RAS+ before anything else

    @field_validator("shape")
    @classmethod
    def _shape_is_2d_or_3d(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) not in (2, 3) or any(s < 4 for s in v):
            raise ValueError("must be (H, W) or (D, H, W) with every side >= 4")
        return v

    @field_validator("intensity_percentiles")
    @classmethod
    def _percentiles_ordered(cls, v):
        if v is not None and not (0 <= v[0] < v[1] <= 100):
            raise ValueError("must be (low, high) with 0 <= low < high <= 100")
        return v

    @property
    def ndim(self) -> int:
        return len(self.shape)


class DataConfig(StrictModel):
    """A dataset: which reader, where it lives, how it is preprocessed."""

    name: str
    reader: Literal["vindr", "nifti", "folder"]
    root: Path | None = None
    manifest: str | None = None  # nifti/folder: CSV file name relative to root (or absolute)
    modality: str = "OT"
    preprocess: PreprocessConfig
    cache_dir: Path | None = None  # None: $SYNTH_AUDIT_CACHE or ~/.cache/synth-audit

    def with_root(self, root: str | Path | None) -> "DataConfig":
        return self if root is None else self.model_copy(update={"root": Path(root)})

    def preprocess_key(self) -> str:
        """Hash of everything that changes decoded pixels (the root does not)."""
        payload = {"reader": self.reader, "preprocess": self.preprocess.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


M = TypeVar("M", bound=BaseModel)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if first["type"] == "missing":
        return f"missing key '{key}'"
    return f"bad value for '{key}': {first['msg']}"


def validate(model: type[M], data: Any, source: str | Path) -> M:
    """Validate a mapping into `model`; errors name the source file and the key."""
    if not isinstance(data, dict):
        raise AuditInputError(source, f"expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise AuditInputError(source, _format_validation_error(err)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise AuditInputError(path, f"cannot read config ({err.strerror or err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise AuditInputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None


def preset_names(kind: str) -> list[str]:
    folder = resources.files("configs") / kind
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(kind: str, name_or_path: str | Path) -> tuple[Any, str]:
    """A preset by name from the package's configs/<kind>/, or any YAML file by path. Returns (data, source)."""
    if kind not in PRESET_KINDS:
        raise ValueError(f"unknown preset kind {kind!r}")
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return read_yaml(candidate), str(candidate)
    resource = resources.files("configs") / kind / f"{name_or_path}.yaml"
    if not resource.is_file():
        known = ", ".join(preset_names(kind)) or "none"
        raise AuditInputError(None, f"unknown {kind[:-1]} preset '{name_or_path}' (known: {known})")
    with resources.as_file(resource) as path:
        return read_yaml(path), f"configs/{kind}/{name_or_path}.yaml"


def load_data_config(name_or_path: str | Path, root: str | Path | None = None,
                     overrides: dict[str, Any] | None = None) -> DataConfig:
    """Load a dataset preset (`vindr`, `phantom-mammo`, ...) and point it at `root`."""
    data, source = load_preset("datasets", name_or_path)
    if overrides:
        data = _deep_merge(data if isinstance(data, dict) else {}, overrides)
    cfg = validate(DataConfig, data, source)
    return cfg.with_root(root)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
