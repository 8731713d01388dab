"""Replica scorers by name, on the suite's one registry pattern (`audit.registry`): each scorer is a class with a
declared pydantic ``Params`` and is built as ``Scorer(params, runtime)``. An unknown scorer, an undeclared option
(``--option ncc_reg.kk=3``) or a bad value is one input-error line listing what exists; the device, batch size and
seed travel in the `Runtime`, which every scorer receives alike, so none can drop them silently.

Presets (`--preset`): ``default`` is the best set measured on the benchmark (docs/replicas.md, "Choosing the
default set"); ``fast`` the cheap set for a quick look, with its own figures.
"""

from __future__ import annotations

from typing import Any, Mapping

from attacks.replicas.base import ReplicaScorer
from audit.errors import AuditInputError
from audit.registry import Registry, Runtime, parse_option_assignments

SCORERS: Registry[ReplicaScorer] = Registry("scorer")
SCORERS.register("ncc", "attacks.replicas.voxel:NCCScorer", "voxel: NCC shortlist, full-resolution NCC")
SCORERS.register("ssim", "attacks.replicas.voxel:SSIMScorer", "voxel: exact SSIM of the SSIM search's nearest images")
SCORERS.register("ncc_shift", "attacks.replicas.voxel:ShiftNCCScorer", "voxel: best overlap NCC over shifts")
SCORERS.register("ncc_zoom", "attacks.replicas.voxel:ZoomNCCScorer", "voxel: ncc_shift over magnifications too")
SCORERS.register("ncc_reg", "attacks.replicas.voxel:RegisteredNCCScorer",
                 "voxel: registration (rotations × magnifications × shifts) of a robust shortlist")
SCORERS.register("ncc_reg_coarse", "attacks.replicas.voxel:CoarseRegisteredNCCScorer",
                 "voxel: ncc_reg at a coarse scale (low-pass σ 3 px in 2D): copies that lost their fine scales")
SCORERS.register("ncc_fm", "attacks.replicas.invariant:InvariantNCCScorer",
                 "voxel (2D): Fourier-Mellin shortlist, estimated rotation + magnification, masked NCC over shifts")
SCORERS.register("ncc_local", "attacks.replicas.local:LocalNCCScorer",
                 "local: a copied region (best window NCC over the training images' windows)")
SCORERS.register("feature", "attacks.replicas.feature:FeatureScorer", "feature: encoder embedding cosine")
SCORERS.register("segmentation", "attacks.replicas.segmentation:SegmentationScorer",
                 "segmentation: best multi-class Dice of the shortlist's masks")
SCORERS.register("deepssim", "attacks.replicas.deepssim:DeepSSIMScorer",
                 "learned: DeepSSIM embedding retrieval, verified by exact SSIM")

# The best set of the benchmark (chosen on its tuning split; see docs/replicas.md) and the cheap one. `ncc_fm` (2D
# only: skipped with its reason on volumes) since 2026-12-01 session 5, as a level of its own (combined.py).
PRESETS: dict[str, tuple[str, ...]] = {
    "default": ("ncc", "ssim", "ncc_reg", "ncc_reg_coarse", "ncc_local", "ncc_fm"),
    "fast": ("ncc", "ssim"),
}
DEFAULT_SCORERS = PRESETS["default"]


def known_scorers() -> list[str]:
    return SCORERS.names()


def parse_scorer_list(text: str, flag: str = "--scorers") -> list[str]:
    """'ncc, ssim' → ['ncc', 'ssim']; unknown or repeated names are input errors naming the flag."""
    return SCORERS.parse_names(text, flag)


def preset_scorers(name: str) -> list[str]:
    if name not in PRESETS:
        raise AuditInputError(None, f"--preset: unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return list(PRESETS[name])


def make_scorer(name: str, options: Mapping[str, Any] | None = None, runtime: Runtime | None = None) -> ReplicaScorer:
    """A fresh, unfitted scorer; its options are validated against its declared Params before any work."""
    return SCORERS.create(name, options, runtime)


def check_options(scorer_names: list[str], options: Mapping[str, Mapping[str, Any]], flag: str = "--option") -> None:
    """Every option must name a listed scorer (an option for a scorer that does not run would be silently
    ignored) and be declared by it."""
    for name, values in options.items():
        if name not in scorer_names:
            raise AuditInputError(None, f"{flag}: '{name}' is not among the scorers of this run "
                                        f"({', '.join(scorer_names)})")
        SCORERS.params(name, values)


def build_scorers(scorer_names: list[str], options: Mapping[str, Mapping[str, Any]] | None = None,
                  runtime: Runtime | None = None) -> dict[str, ReplicaScorer]:
    """Every listed scorer built (parameters validated, checkpoints loaded) before any image is read."""
    options = dict(options or {})
    check_options(scorer_names, options)
    return {name: make_scorer(name, options.get(name), runtime) for name in scorer_names}


__all__ = ["SCORERS", "PRESETS", "DEFAULT_SCORERS", "known_scorers", "parse_scorer_list", "preset_scorers",
           "make_scorer", "check_options", "build_scorers", "parse_option_assignments"]
