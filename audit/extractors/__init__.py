"""Fidelity feature extractors by name (`--extractor NAME`): FID and its relatives are comparable only under the
same extractor, so every result names it and the SHA-256 of its weights.

    inception       the standard FID InceptionV3 (torch-fidelity), weights from a local file (--weights)
    radiomics       weight-free hand-crafted texture/intensity features, 2D and native 3D (FRD-like)
    domain          the suite's self-supervised encoder trained on the real training split (cached)
    timm:<model>    any timm backbone from a local safetensors file (--weights)

2D-only extractors read volumes as 2.5D (three orthogonal planes through the centre; option slices_per_plane).
"""

from __future__ import annotations

from typing import Any, Mapping

from audit.errors import AuditInputError
from audit.registry import Registry, Runtime

EXTRACTORS: Registry = Registry("extractor")
EXTRACTORS.register("inception", "audit.extractors.inception:InceptionExtractor",
                    "standard FID InceptionV3 (torch-fidelity) from a local weights file")
EXTRACTORS.register("radiomics", "audit.extractors.radiomics:RadiomicsExtractor",
                    "weight-free first-order/GLCM/GLRLM features on original and LoG images, 2D and 3D")
EXTRACTORS.register("domain", "audit.extractors.domain:DomainExtractor",
                    "self-supervised encoder trained on the real training split (cached)")
EXTRACTORS.register("timm", "audit.extractors.domain:TimmExtractor", "a timm backbone from local weights")

DEFAULT_EXTRACTOR = "radiomics"


def extractor_spec_names() -> list[str]:
    """Names as the user writes them (timm takes its model after a colon)."""
    return [("timm:<model>" if n == "timm" else n) for n in EXTRACTORS.names()]


def parse_extractor_spec(spec: str, weights: str | None = None,
                         options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """'timm:resnet18' + --weights → ('timm', {'model': 'resnet18', 'weights': ...}); checked against the registry."""
    name, colon, argument = spec.strip().partition(":")
    options = dict(options or {})
    if name not in EXTRACTORS:
        known = ", ".join(extractor_spec_names())
        raise AuditInputError(None, f"--extractor: unknown extractor '{spec}' (known: {known})")
    if (name == "timm") != bool(colon and argument):
        expected = "timm:<model name>" if name == "timm" else name
        raise AuditInputError(None, f"--extractor: write '{expected}', got '{spec}'")
    if name == "timm":
        options["model"] = argument
    if weights is not None:
        if "weights" not in EXTRACTORS.params_model(name).model_fields:
            raise AuditInputError(None, f"--weights: extractor '{name}' takes no weights")
        options["weights"] = str(weights)
    return name, options


def build_extractor(spec: str = DEFAULT_EXTRACTOR, weights: str | None = None,
                    options: Mapping[str, Any] | None = None, runtime: Runtime | None = None):
    """The extractor named by `spec`, its parameters validated (one-line errors for anything unknown)."""
    name, options = parse_extractor_spec(spec, weights, options)
    return EXTRACTORS.create(name, options, runtime or Runtime())
