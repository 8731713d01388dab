"""The validated configuration of one `audit run`: what the flags set, what `--config FILE` sets, and each stage's
parameters — one object, written into the report as it was resolved.

Precedence: the defaults below < the YAML file of `--config` < the flags given on the command line. The file's
keys are the flags' names (`data_root`, `n`, `stages`, ...) plus one section per stage (`fidelity: {...}`) holding
that stage's declared `Params`, and `generate: {...}` for sampling. An unknown key is an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, ValidationError, field_validator

from audit.config import StrictModel, read_yaml
from audit.errors import AuditInputError
from audit.registry import Params, Registry, format_validation_error

GENERATE = "generate"


class GenerateParams(Params):
    """Sampling of the synthetic set (ignored for a folder of images)."""

    batch_size: int = Field(8, ge=1)
    steps: int | None = Field(None, ge=1)  # DDIM steps; None: the checkpoint's own
    guidance: float | None = None  # classifier-free guidance scale; None: the checkpoint's own


class RunOptions(StrictModel):
    """The options of `audit run` (flags and the top-level keys of `--config`)."""

    model: Path
    data: str
    data_root: Path | None = None
    cache_dir: Path | None = None
    out: Path = Path("audit-out")
    gates: str = "default"
    stages: tuple[str, ...] | None = None  # None: every stage
    n: int | None = Field(None, ge=1)  # synthetic images; None: 128 from a model, every image of a folder
    device: str = "cpu"
    seed: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    threads: int | None = Field(None, ge=1)
    members: Path | None = None
    release: Path | None = None

    @field_validator("stages", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v


DEFAULT_N_FROM_MODEL = 128
OPTION_KEYS = tuple(RunOptions.model_fields)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on, validated. `stage_params` holds the Params of every requested stage whose
    module is available; `unavailable` the requested stages that cannot be built (they become stage errors)."""

    options: RunOptions
    stages: tuple[str, ...]  # analysis stages to run, in pipeline order (generation is implied)
    generate: GenerateParams
    stage_params: Mapping[str, Params]
    unavailable: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        """The resolved configuration in the shape `--config` accepts (plus `stages` made explicit)."""
        out = self.options.model_dump(mode="json")
        out["stages"] = [GENERATE, *self.stages]
        out[GENERATE] = self.generate.model_dump(mode="json")
        for name, params in self.stage_params.items():
            out[name] = params.model_dump(mode="json")
        return out


def stage_order(registry: Registry) -> tuple[str, ...]:
    from audit.stages import STAGE_ORDER

    return tuple(n for n in STAGE_ORDER if n in registry) + tuple(n for n in registry.names() if n not in STAGE_ORDER)


def parse_stages(value: tuple[str, ...] | None, registry: Registry, where: str) -> tuple[str, ...]:
    order = stage_order(registry)
    if value is None:
        return order
    known = (GENERATE, *order)
    if not value:
        raise AuditInputError(where, "--stages: give at least one stage")
    for name in value:
        if name not in known:
            raise AuditInputError(where, f"--stages: unknown stage '{name}' (known: {', '.join(known)})")
    if len(set(value)) != len(value):
        raise AuditInputError(where, "--stages: a stage is named twice")
    return tuple(n for n in order if n in value)


def resolve_run_config(flags: Mapping[str, Any], config_file: str | Path | None = None,
                       registry: Registry | None = None) -> RunConfig:
    """Merge defaults, the YAML file and the given flags (None = not given) into a validated RunConfig."""
    from audit.stages import STAGES

    registry = registry if registry is not None else STAGES
    source = str(config_file) if config_file else "command line"
    file_data: dict[str, Any] = {}
    if config_file:
        loaded = read_yaml(config_file)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise AuditInputError(config_file, f"expected a mapping of keys, got {type(loaded).__name__}")
        file_data = loaded
    order = stage_order(registry)
    sections = {GENERATE, *order}
    for key in file_data:
        if key not in OPTION_KEYS and key not in sections:
            known = ", ".join([*OPTION_KEYS, *sorted(sections)])
            raise AuditInputError(config_file, f"unknown key '{key}' (known: {known})")
        if key in sections and not isinstance(file_data[key] or {}, dict):
            raise AuditInputError(config_file, f"'{key}' must be a mapping of that stage's parameters")

    merged = {k: v for k, v in file_data.items() if k in OPTION_KEYS}
    merged.update({k: v for k, v in flags.items() if v is not None and k in OPTION_KEYS})
    given_in_flags = {k for k, v in flags.items() if v is not None}
    try:
        options = RunOptions.model_validate(merged)
    except ValidationError as err:
        first_key = str(err.errors()[0]["loc"][0]) if err.errors()[0]["loc"] else ""
        where = "command line" if first_key in given_in_flags else source
        raise AuditInputError(where, format_validation_error(err)) from None

    stages = parse_stages(options.stages, registry, source)
    try:
        generate = GenerateParams.model_validate(file_data.get(GENERATE) or {})
    except ValidationError as err:
        raise AuditInputError(source, f"generate: {format_validation_error(err)}") from None

    stage_params: dict[str, Params] = {}
    unavailable: dict[str, str] = {}
    for name in order:
        section = file_data.get(name) or {}
        try:
            registry.params_model(name)  # imports the stage's module: a missing one is that stage's error
        except AuditInputError as err:
            if name in stages:
                unavailable[name] = str(err)
            continue
        try:
            params = registry.params(name, section)
        except AuditInputError as err:
            raise AuditInputError(source, str(err)) from None
        if name in stages:
            stage_params[name] = params
    return RunConfig(options, stages, generate, stage_params, unavailable)
