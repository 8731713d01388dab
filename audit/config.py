"""Typed configuration: YAML presets shipped in `configs/`, validated into pydantic models.

An unknown key or a wrong type is an `AuditInputError` naming the key (e.g. `preprocess.shape`), so a typo in a
preset never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import math
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
        from audit.data.limits import max_elements  # lazy: audit.data imports this module

        if math.prod(v) > max_elements(len(v)):
            raise ValueError(f"{' x '.join(map(str, v))} is above the size limit of {max_elements(len(v)):,} "
                             "elements (see audit/data/limits.py)")
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


# Configs are data. YAML is parsed with the safe loader only (no tag constructs an object: `!!python/...` is an
# error), and two sizes are bounded before anything is built: the file, and the document once its aliases are
# expanded — a "billion laughs" file of a few hundred bytes whose anchors expand to 10^9 nodes would otherwise
# hang validation (or json.dumps of the config) for ever.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Nodes of the document with every alias expanded (memoised per node, so computing it is linear)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a node reached again while it is being sized is a recursive alias: too big
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo, limit) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, limit) + _expanded_size(v, memo, limit) for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, limit + 1)
    return memo[key]


def parse_yaml_text(text: str, source: str | Path) -> Any:
    """YAML text → plain data (dicts, lists, str, numbers, bools, None) or an AuditInputError naming `source`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise AuditInputError(source, f"config is larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader checks characters already here
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
            raise AuditInputError(source, f"YAML expands to more than {MAX_CONFIG_NODES:,} values once its aliases "
                                          "(*anchors) are expanded; refused (an alias bomb?)")
        return loader.construct_document(node)
    except yaml.constructor.ConstructorError as err:
        problem = " ".join(str(err.problem or "").split())
        raise AuditInputError(source, f"refused YAML: {problem} (configs are data: tags that build Python objects "
                                      "are not allowed)") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AuditInputError(source, f"not valid YAML ({first})") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as err:  # deep nesting, odd scalars
        raise AuditInputError(source, f"not a usable YAML config ({type(err).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise AuditInputError(path, f"config is larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise AuditInputError(path, f"cannot read config ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise AuditInputError(path, "cannot read config (not UTF-8 text)") from None
    return parse_yaml_text(text, path)


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
