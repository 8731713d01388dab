"""The contract between `audit run` (audit/pipeline.py) and its stages.

A stage answers one question about one model (copies, membership, linkage, fidelity, utility). It is a registry
component (`audit.registry`): a class with a pydantic ``Params`` model — its section of the run configuration,
whose defaults run in minutes on 2 CPU cores — built as ``Stage(params, runtime)``, with

- ``name``: the stage's name, the prefix of its figures in the report (``fidelity/fid``);
- ``requirements(inputs) -> str | None``: checked before any heavy work; a string is the reason the stage is
  *skipped* (e.g. "the model is a folder of images: no white-box access"), None means it can run. Bad input is
  not a skip: it raises `AuditInputError`;
- ``run(inputs, context) -> StageOutput``: the work. It writes its files only under ``context.out_dir`` (a folder
  of its own), builds what depends only on the data through ``context.cache`` (shared by every model audited on
  that data), and returns typed figures;
- ``describe() -> dict``: its resolved parameters and components (goes into the report).

Figures are `Estimate`s (value, CI, n, higher_is_better, method) under names without the stage prefix; a ``/``
separates a part from its metric (``loss/auc``, ``best/tpr_at_fpr_1pct``). The report's full name is
``<stage>/<name>``, and gates (configs/gates/*.yaml) refer to that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from audit.artifacts import ArtifactCache
from audit.jsonio import json_safe
from audit.metrics.statistics import Estimate
from audit.registry import Registry, Runtime

ARTEFACT_KINDS = ("plot", "gallery", "table", "data")


@dataclass(frozen=True)
class Artefact:
    """A file a stage wrote: `path` relative to the stage's folder; `kind` tells the report how to show it
    (plot/gallery: embedded image; table/data: linked file)."""

    path: str
    kind: str
    caption: str = ""

    def __post_init__(self):
        if self.kind not in ARTEFACT_KINDS:
            raise ValueError(f"artefact kind {self.kind!r} not in {ARTEFACT_KINDS}")


@dataclass
class StageOutput:
    figures: dict[str, Estimate] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-safe: tables, per-part parameters, notes
    artefacts: dict[str, Artefact] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # a part of the stage that did not run → why
    # ids (record.id) of the synthetic images this stage judges unfit for release (replicas: flagged copies;
    # reid: images linked to a training patient); `audit run --release` removes every one of them
    flagged_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"figures": {k: v.to_dict() for k, v in self.figures.items()},
                "flagged_ids": list(self.flagged_ids),
                "details": json_safe(self.details),
                "artefacts": {k: {"path": a.path, "kind": a.kind, "caption": a.caption}
                              for k, a in self.artefacts.items()},
                "skipped": dict(self.skipped)}


@dataclass
class StageInputs:
    """What a stage may use. Every image set is an `ImageDataset` at the run's image shape (stream it with
    `iter_images`; `stack()` only for sets known to be small)."""

    data_config: Any  # audit.config.DataConfig
    train: Any  # ImageDataset: the real training split (references for replicas / re-id / fidelity)
    holdout: Any  # ImageDataset: real images no model was trained on (calibration nulls, non-members, tests)
    synthetic: Any | None = None  # ImageDataset of the synthetic images (records carry source_id and labels)
    generator: Any | None = None  # generators.base.Generator (denoiser() is None without white-box access)
    members: Any | None = None  # ImageDataset: the images the generator was trained on (default: train)


@dataclass
class StageContext:
    out_dir: Path  # this stage's own folder under the run's OUT; write atomically (temp name, then rename)
    runtime: Runtime
    cache: ArtifactCache


@runtime_checkable
class Stage(Protocol):
    name: str

    def requirements(self, inputs: StageInputs) -> str | None: ...

    def run(self, inputs: StageInputs, context: StageContext) -> StageOutput: ...

    def describe(self) -> dict[str, Any]: ...


# The audit's stages after generation, in the order `audit run` runs them. Each module is written with its
# issue; a stage whose module is not there yet is reported as such by the registry.
STAGES: Registry[Stage] = Registry("stage")
STAGES.register("fidelity", "audit.metrics.fidelity_stage:FidelityStage", "FID/KID/precision-recall/density-coverage")
STAGES.register("utility", "audit.metrics.utility_stage:UtilityStage", "train on synthetic, test on real")
STAGES.register("reid", "attacks.reid.stage:ReidStage", "Siamese re-identification of patients")
STAGES.register("membership", "attacks.membership.stage:MembershipStage", "membership inference attacks")
STAGES.register("replicas", "attacks.replicas.stage:ReplicaStage", "replica (copy) detection")
STAGE_ORDER = ("fidelity", "utility", "reid", "membership", "replicas")
