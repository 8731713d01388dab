"""What a utility classifier predicts: a rule from an image's labels to a class index, chosen by name.

Every target has fixed `classes` (binary targets: ``("negative", "positive")``) and maps a record's `Labels` to a
class index, or to None when the record does not carry the label (such images are left out of that target's
sets and counted). Real images get their labels from the dataset, synthetic ones from the conditions they were
made from (the generator's manifest, read by the folder reader).

Names (``--target``): ``malignancy`` (BI-RADS ≥ 4), ``density`` (A–D, four classes: one-vs-rest macro AUC),
``finding`` (a finding category present; ``finding:Mass`` for one category), ``lesion`` (the manifest column
``lesion``, e.g. the brain phantom's) and ``label:<column>`` (any manifest column with binary values). The text
after ``:`` sets the target's one argument (`ARGUMENT`).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from audit.data.records import Labels, Record
from audit.errors import AuditInputError
from audit.registry import Params, Registry, Runtime

NO_FINDING = "No Finding"
# spellings of a binary manifest value (anything numeric counts too: 0 negative, any other number positive)
TRUE_WORDS = {"true", "yes", "y", "positive", "pos"}
FALSE_WORDS = {"false", "no", "n", "negative", "neg", "none"}


class Target(Protocol):
    name: str
    classes: tuple[str, ...]
    reads: str  # the label (column) it needs, for messages: "birads", "density", "lesion"...

    def label_of(self, labels: Labels) -> int | None: ...

    def describe(self) -> dict[str, Any]: ...


class _TargetBase:
    name = ""
    classes: tuple[str, ...] = ("negative", "positive")
    reads = ""

    def __init__(self, params: Params, runtime: Runtime | None = None):
        self.params = params

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "classes": list(self.classes), "reads": self.reads,
                "params": self.params.model_dump(mode="json")}


class Malignancy(_TargetBase):
    """Breast-level BI-RADS ≥ threshold (default 4: suspicious) → positive; BI-RADS 1–3 → negative."""

    ARGUMENT = "threshold"

    class Params(Params):
        threshold: int = 4

    name = "malignancy"
    reads = "birads"

    def label_of(self, labels: Labels) -> int | None:
        if labels.birads is None:
            return None
        return int(int(labels.birads) >= self.params.threshold)


def normalise_density(value: str) -> str:
    """'DENSITY C' / ' c ' → 'C' (VinDr writes the former, manifests may write either)."""
    text = str(value).strip().upper()
    return text[len("DENSITY"):].strip() if text.startswith("DENSITY") else text


class Density(_TargetBase):
    """Breast density, one class per category (A–D); scored by the one-vs-rest macro AUC."""

    class Params(Params):
        categories: tuple[str, ...] = ("A", "B", "C", "D")

    name = "density"
    reads = "density"

    def __init__(self, params: Params, runtime: Runtime | None = None):
        super().__init__(params, runtime)
        self.classes = tuple(normalise_density(c) for c in params.categories)

    def label_of(self, labels: Labels) -> int | None:
        if labels.density in (None, ""):
            return None
        value = normalise_density(labels.density)
        if value not in self.classes:
            raise AuditInputError(None, f"target 'density': value '{labels.density}' is not one of "
                                        f"{', '.join(self.classes)}")
        return self.classes.index(value)


class Finding(_TargetBase):
    """A finding present (any category but 'No Finding', or the one named by `category`) → positive.

    An image with no finding listed counts as negative when it carries other diagnostic labels (BI-RADS);
    with neither, its label is unknown."""

    ARGUMENT = "category"

    class Params(Params):
        category: str | None = None

    name = "finding"
    reads = "findings"

    def label_of(self, labels: Labels) -> int | None:
        present = [f for f in labels.findings if f and f != NO_FINDING]
        if not labels.findings and labels.birads is None:
            return None
        if self.params.category is None:
            return int(bool(present))
        wanted = self.params.category.strip().lower()
        return int(any(f.strip().lower() == wanted for f in present))


def binary_value(value: Any, column: str) -> int | None:
    """A manifest value as 0/1: numbers (0 → 0, else 1), true/false words; empty → None (unknown)."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "":
        return None
    try:
        return int(float(text) != 0)
    except ValueError:
        pass
    if text.lower() in TRUE_WORDS:
        return 1
    if text.lower() in FALSE_WORDS:
        return 0
    raise AuditInputError(None, f"target 'label:{column}': value '{text}' is not binary "
                                f"(expected a number or one of {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))})")


class ManifestLabel(_TargetBase):
    """Any binary label column of a manifest (3D sets, folders): `label:<column>`."""

    ARGUMENT = "column"

    class Params(Params):
        column: str

    name = "label"

    def __init__(self, params: Params, runtime: Runtime | None = None):
        super().__init__(params, runtime)
        self.reads = params.column
        self.name = f"label:{params.column}"

    def label_of(self, labels: Labels) -> int | None:
        return binary_value(dict(labels.extra).get(self.params.column), self.params.column)


class Lesion(ManifestLabel):
    """The manifest column `lesion` (the brain phantom: a lesion present in the volume)."""

    ARGUMENT = None

    class Params(Params):
        column: str = "lesion"

    def __init__(self, params: Params, runtime: Runtime | None = None):
        super().__init__(params, runtime)
        self.name = "lesion"


TARGETS: Registry[Target] = Registry("target")
TARGETS.register("malignancy", Malignancy, "BI-RADS >= 4 (breast level): binary")
TARGETS.register("density", Density, "breast density A-D: one-vs-rest macro AUC")
TARGETS.register("finding", Finding, "a finding category present (finding:<category> for one)")
TARGETS.register("lesion", Lesion, "the manifest column 'lesion' (brain phantom): binary")
TARGETS.register("label", ManifestLabel, "label:<column>: any binary manifest column")


def make_target(spec: str, options: dict[str, Any] | None = None) -> Target:
    """'malignancy' / 'finding:Mass' / 'label:vessels' → a target; the text after ':' is its ARGUMENT."""
    name, sep, argument = str(spec).strip().partition(":")
    options = dict(options or {})
    if sep:
        key = getattr(TARGETS.component(name), "ARGUMENT", None)
        if key is None:
            raise AuditInputError(None, f"target '{name}' takes no ':' argument (got '{spec}')")
        if not argument.strip():
            raise AuditInputError(None, f"target '{spec}': give a value after ':'")
        options[key] = argument.strip()
    return TARGETS.create(name, options)


def default_target_name(records: Sequence[Record]) -> str | None:
    """The target `auto` stands for: malignancy when the images carry BI-RADS, lesion when a manifest has a
    `lesion` column; otherwise None (the user must name one)."""
    if any(r.labels.birads is not None for r in records):
        return "malignancy"
    if any("lesion" in dict(r.labels.extra) for r in records):
        return "lesion"
    return None
