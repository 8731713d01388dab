"""`audit data inspect`: what a dataset holds, what could not be used and why, and what it looks like."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audit.data.dataset import ImageDataset, Sample
from audit.data.records import SkippedFile
from audit.errors import AuditInputError
from audit.progress import progress_bar


@dataclass
class InspectReport:
    dataset: str
    shape: list[int]
    n_records: int
    counts: dict = field(default_factory=dict)
    patients: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    decoded: int = 0
    intensity: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def label_counts(dataset: ImageDataset) -> dict[str, dict[str, int]]:
    records = dataset.records
    counters: dict[str, Counter] = {"split": Counter(r.split for r in records)}
    if any(r.labels.birads is not None for r in records):
        counters["birads"] = Counter(str(r.labels.birads) for r in records)
    if any(r.labels.density for r in records):
        counters["density"] = Counter(str(r.labels.density) for r in records)
    if any(r.view for r in records):
        counters["view"] = Counter(str(r.view) for r in records)
    if any(r.laterality for r in records):
        counters["laterality"] = Counter(str(r.laterality) for r in records)
    findings = Counter(f for r in records for f in r.labels.findings)
    if findings or any(r.modality == "MG" for r in records):
        findings["(no finding)"] = sum(1 for r in records if not r.labels.findings)
        counters["finding"] = findings
        counters["images with boxes"] = Counter({"yes": sum(1 for r in records if r.boxes),
                                                 "no": sum(1 for r in records if not r.boxes)})
    extra_keys = sorted({k for r in records for k, _ in r.labels.extra})
    for key in extra_keys:
        values = Counter(str(dict(r.labels.extra).get(key)) for r in records)
        if len(values) <= 20:  # a label, not a free-text column
            counters[key] = values
    return {name: dict(sorted(c.items())) for name, c in counters.items()}


def patient_counts(dataset: ImageDataset) -> dict:
    out = {}
    for split in sorted({r.split for r in dataset.records}):
        per_patient = Counter(r.patient_id for r in dataset.records if r.split == split)
        sizes = np.array(list(per_patient.values()))
        out[split] = {"patients": len(per_patient), "images_per_patient_min": int(sizes.min()),
                      "images_per_patient_median": float(np.median(sizes)),
                      "images_per_patient_max": int(sizes.max())}
    leaked = {r.patient_id for r in dataset.records if r.split == "train"} & \
             {r.patient_id for r in dataset.records if r.split != "train"}
    out["patients_in_train_and_other_splits"] = len(leaked)
    return out


def pick_for_sheet(dataset: ImageDataset, n: int) -> list[int]:
    """Half with lesion boxes (to show them), the rest spread evenly over the set; deterministic."""
    with_boxes = [i for i, r in enumerate(dataset.records) if r.boxes]
    chosen = [with_boxes[int(j)] for j in np.linspace(0, len(with_boxes) - 1, min(n // 2, len(with_boxes)))] \
        if with_boxes else []
    rest = [i for i in np.linspace(0, len(dataset) - 1, min(n, len(dataset))).astype(int) if i not in chosen]
    return sorted(set(chosen + rest[: n - len(chosen)]))


def inspect_dataset(dataset: ImageDataset, decode: str = "all", sheet: Path | None = None,
                    sheet_size: int = 24) -> InspectReport:
    """Count, try to decode (all / a sample / none), and draw a contact sheet. Failures are listed, never hidden."""
    report = InspectReport(dataset=dataset.name, shape=list(dataset.shape), n_records=len(dataset),
                           counts=label_counts(dataset), patients=patient_counts(dataset),
                           skipped=[asdict(s) for s in dataset.skipped])
    sheet_indices = pick_for_sheet(dataset, sheet_size)
    to_decode = {"all": range(len(dataset)), "sample": sheet_indices, "none": []}[decode]
    samples: dict[int, Sample] = {}
    means = []
    for i in progress_bar(list(to_decode), desc=f"decode {dataset.name}"):
        record = dataset.records[i]
        try:
            image, boxes = dataset.load(record)
        except AuditInputError as err:
            report.failed.append(asdict(SkippedFile(record.path, err.problem)))
            continue
        report.decoded += 1
        means.append(float(image.mean()))
        if i in sheet_indices:
            samples[i] = Sample(image=image, record=record, boxes=boxes)
    if means:
        report.intensity = {"mean_of_means": float(np.mean(means)), "min_mean": float(np.min(means)),
                            "max_mean": float(np.max(means))}
    if sheet is not None and samples:
        from audit.data.contact_sheet import write_contact_sheet

        write_contact_sheet([samples[i] for i in sorted(samples)], sheet,
                            title=f"{dataset.name}: {len(dataset)} images, shape {tuple(dataset.shape)}")
    return report


def format_report(report: InspectReport) -> str:
    lines = [f"dataset {report.dataset}: {report.n_records} images, shape {tuple(report.shape)}"]
    for name, counts in report.counts.items():
        lines.append(f"  {name:<18} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    for split, info in report.patients.items():
        if isinstance(info, dict):
            lines.append(f"  {'patients ' + split:<18} {info['patients']} "
                         f"(images/patient {info['images_per_patient_min']}-{info['images_per_patient_max']})")
    if report.patients.get("patients_in_train_and_other_splits"):
        lines.append(f"  WARNING: {report.patients['patients_in_train_and_other_splits']} patients are in train "
                     "and in another split")
    lines.append(f"  decoded            {report.decoded}")
    excluded = [s for s in report.skipped if s["kind"] == "excluded"]
    broken = [s for s in report.skipped if s["kind"] != "excluded"] + report.failed
    lines.append(f"  excluded by rule   {len(excluded)}")
    lines.append(f"  failed             {len(broken)}")
    for s in (excluded + broken)[:50]:
        lines.append(f"    {s['path']}: {s['reason']}")
    if len(excluded) + len(broken) > 50:
        lines.append(f"    ... {len(excluded) + len(broken) - 50} more in inspect.json")
    return "\n".join(lines)
