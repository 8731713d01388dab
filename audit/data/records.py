"""The record: what the data layer knows about one image, without its pixels.

Records carry only technical and label information. Nothing identifying a person (names, DICOM patient ids,
dates, institutions) is ever stored here; `patient_id` is the dataset's pseudonymous identity key
(VinDr-Mammo: the study_id hash).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "test", "val")


@dataclass(frozen=True)
class Box:
    """A lesion box in pixel coordinates of the image it belongs to (x = column, y = row)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    category: str = "Mass"
    birads: int | None = None


@dataclass(frozen=True)
class Labels:
    """Diagnostic labels. `extra` holds dataset-specific labels (3D manifests) as plain strings/numbers."""

    birads: int | None = None  # 1..5 (breast level)
    density: str | None = None  # "A".."D"
    findings: tuple[str, ...] = ()  # finding categories; empty = no finding
    extra: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"birads": self.birads, "density": self.density, "findings": list(self.findings)}
        out.update(dict(self.extra))
        return out


@dataclass(frozen=True)
class Record:
    id: str
    patient_id: str
    split: str  # one of SPLITS
    modality: str  # DICOM-style: "MG", "MR", "CT", "OT"
    path: str
    view: str | None = None  # "CC" / "MLO" for mammograms
    laterality: str | None = None  # "L" / "R"
    labels: Labels = field(default_factory=Labels)
    boxes: tuple[Box, ...] = ()  # in the source image's original pixel coordinates
    source_id: str | None = None  # synthetic images: id of the training record whose condition made them

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = self.labels.as_dict()
        d["boxes"] = [asdict(b) for b in self.boxes]
        return d


@dataclass(frozen=True)
class SkippedFile:
    """A file the reader did not turn into a record, and why. Always reported, never silently dropped."""

    path: str
    reason: str
    kind: str = "failed"  # "failed" (broken input) or "excluded" (by rule, e.g. FOR PROCESSING)
    split: str | None = None  # the split the file was listed in, when known (an export of it is then incomplete)
