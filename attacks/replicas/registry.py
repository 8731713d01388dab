"""Replica scorers by name: a validated registry (name → factory), so pipelines and the CLI inject scorers
instead of branching on names.

Built in: ``ncc``, ``ssim``, ``ncc_shift`` and ``ncc_zoom`` (voxel level). The learned levels live in their own modules, imported
when asked for: a module exposing ``make_scorer(**options)`` (options it does not declare are not passed), or,
failing that, a class whose ``name`` is the scorer name. A known name whose module is not there raises a clear
`AuditInputError("scorer X not available")`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from attacks.replicas.base import ReplicaScorer
from audit.errors import AuditInputError

ScorerFactory = Callable[..., ReplicaScorer]

SCORERS: dict[str, ScorerFactory] = {}

# learned levels, written in their own modules; imported lazily so that ncc/ssim never pay for them
SCORER_MODULES: dict[str, str] = {
    "feature": "attacks.replicas.feature",
    "segmentation": "attacks.replicas.segmentation",
    "deepssim": "attacks.replicas.deepssim",
}

DEFAULT_SCORERS = ("ncc", "ssim")


def register_scorer(name: str, factory: ScorerFactory) -> None:
    SCORERS[name] = factory


def known_scorers() -> list[str]:
    return sorted(set(SCORERS) | set(SCORER_MODULES))


def _call_with_accepted(factory: Callable[..., Any], options: dict[str, Any]) -> Any:
    """Call `factory` with the options its signature declares (all of them if it takes **kwargs)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**options)
    return factory(**{k: v for k, v in options.items() if k in params and v is not None})


def _factory_from_module(name: str) -> ScorerFactory:
    module_name = SCORER_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):  # the module itself, not one of its imports
            raise AuditInputError(None, f"scorer {name} not available (module {module_name} is not installed "
                                        f"in this version)") from None
        raise AuditInputError(None, f"scorer {name} not available ({module_name} needs the missing package "
                                    f"'{err.name}')") from None
    factory = getattr(module, "make_scorer", None)
    if factory is None:
        classes = [obj for obj in vars(module).values()
                   if inspect.isclass(obj) and getattr(obj, "name", None) == name
                   and callable(getattr(obj, "fit", None)) and callable(getattr(obj, "score", None))]
        if not classes:
            raise AuditInputError(None, f"scorer {name} not available ({module_name} defines neither "
                                        f"make_scorer nor a scorer class named '{name}')")
        factory = classes[0]
    return factory


def make_scorer(name: str, **options: Any) -> ReplicaScorer:
    """A fresh, unfitted scorer. `options` (device, batch_size, seed, checkpoint, k, ...) go to the factory
    when it declares them; parameters are validated by the factory before any heavy work."""
    if name not in SCORERS and name not in SCORER_MODULES:
        raise AuditInputError(None, f"unknown scorer '{name}' (known: {', '.join(known_scorers())})")
    factory = SCORERS.get(name) or _factory_from_module(name)
    SCORERS.setdefault(name, factory)
    return _call_with_accepted(factory, options)


def parse_scorer_list(text: str) -> list[str]:
    """'ncc, ssim' → ['ncc', 'ssim']; unknown or repeated names are input errors."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise AuditInputError(None, "--scorers: give at least one scorer")
    unknown = [n for n in names if n not in SCORERS and n not in SCORER_MODULES]
    if unknown:
        raise AuditInputError(None, f"--scorers: unknown scorer '{unknown[0]}' (known: {', '.join(known_scorers())})")
    if len(set(names)) != len(names):
        raise AuditInputError(None, "--scorers: a scorer is named twice")
    return names


def _voxel_factory(measure: str) -> ScorerFactory:
    def factory(k: int = 10, device: str = "cpu", batch_size: int = 64, shortlist_side: int | None = None,
                shortlist_metric: str | None = None, flips: bool = True):
        if shortlist_metric is None:  # the transformation-tolerant shortlist for the registration scorer
            shortlist_metric = "robust" if measure == "ncc_reg" else "ncc"
        from attacks.replicas.voxel import VoxelScorer

        return VoxelScorer(measure=measure, k=k, shortlist_side=shortlist_side, shortlist_metric=shortlist_metric,
                           flips=flips, device=device, batch_size=batch_size)

    factory.__name__ = f"make_{measure}_scorer"
    return factory


register_scorer("ncc", _voxel_factory("ncc"))
register_scorer("ssim", _voxel_factory("ssim"))
register_scorer("ncc_shift", _voxel_factory("ncc_shift"))
register_scorer("ncc_zoom", _voxel_factory("ncc_zoom"))
register_scorer("ncc_reg", _voxel_factory("ncc_reg"))
