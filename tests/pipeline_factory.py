"""Small worlds for `audit run` tests: a labelled 16×16 image dataset (folder reader), a folder model whose
images include planted exact copies of training images, a fake sampling generator, and fake stages that report
planted figures, raise, skip, or flag images — registered in a test-local `Registry("stage")`."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from audit.metrics.statistics import Estimate, rate_estimate
from audit.registry import Params, Registry
from audit.stages import Artefact, StageOutput

SHAPE = (16, 16)
RUNS: Counter = Counter()  # stage name → number of times its run() was called
SAMPLES: Counter = Counter()  # images the fake generator sampled


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)).save(path)


def blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    cy, cx = rng.uniform(4, 12, 2)
    return (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(6, 20)) * 0.8 + rng.uniform(0, 0.2, SHAPE))


def write_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_dataset(root: Path, n_train: int = 12, n_test: int = 6) -> tuple[Path, Path]:
    """A folder dataset (2 images per patient) and its preset YAML. Returns (preset path, data root)."""
    data = root / "data"
    rows = []
    for i in range(n_train + n_test):
        rid = f"r{i:03d}"
        write_png(data / f"{rid}.png", blob(i))
        rows.append({"file": f"{rid}.png", "id": rid, "patient_id": f"p{i // 2:03d}",
                     "split": "train" if i < n_train else "test", "view": ("CC", "MLO")[i % 2],
                     "laterality": "L", "birads": str(1 + i % 3), "density": "ABCD"[i % 4], "findings": ""})
    write_csv(data / "manifest.csv", rows)
    preset = root / "tiny.yaml"
    preset.write_text("name: tiny\nreader: folder\nmanifest: manifest.csv\npreprocess:\n  shape: [16, 16]\n")
    return preset, data


def make_folder_model(root: Path, data: Path, copies: Sequence[int] = (0, 3), n_new: int = 8,
                      names: dict[int, str] | None = None) -> Path:
    """Synthetic images: exact copies of the listed training records, then new images. `names` renames files."""
    model = root / "model"
    rows = []
    images = [(f"r{i:03d}", np.asarray(Image.open(data / f"r{i:03d}.png")).astype(np.float32) / 65535)
              for i in copies] + [(None, blob(1000 + j)) for j in range(n_new)]
    for j, (source, image) in enumerate(images):
        name = (names or {}).get(j, f"s{j:03d}.png")
        write_png(model / name, image)
        rows.append({"file": name, "id": name.rsplit(".", 1)[0], "source_id": source or f"r{j % 12:03d}",
                     "view": "CC", "laterality": "L", "birads": "1", "density": "A", "findings": ""})
    write_csv(model / "manifest.csv", rows)
    return model


class FakeGenerator:
    """Samples deterministic blobs: image i depends on (seed, i) only. Trained on the first 6 training records."""

    kind = "fake"
    shape = SHAPE

    def __init__(self, path: Path):
        from generators.base import Condition

        self.path = Path(path)
        self.training_conditions = [Condition(source_id=f"r{i:03d}") for i in range(6)]

    def sample(self, conditions, seed: int, first_index: int = 0) -> np.ndarray:
        SAMPLES["images"] += len(conditions)
        return np.stack([blob(10_000 * (seed + 1) + first_index + j) for j in range(len(conditions))]
                        ).astype(np.float32)

    def default_conditions(self, n: int, seed: int, first_index: int = 0):
        return [self.training_conditions[(first_index + i) % 6] for i in range(n)]

    def describe(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "checkpoint_hash": "f" * 64}

    def denoiser(self):
        return None


def load_fake(path, device="cpu"):
    from generators.loading import load_generator

    if (Path(path) / "FAKE").is_file():
        return FakeGenerator(path)
    return load_generator(path, device)


def make_fake_checkpoint(root: Path) -> Path:
    folder = root / "fake-ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "FAKE").write_text("a fake generator for tests\n")
    return folder


# ------------------------------------------------------------------------------------------------ fake stages


def _plot(out: Path, name: str, value: float) -> str:
    """A real PNG the report must embed."""
    image = np.zeros((24, 48), np.uint8)
    image[:, : int(48 * min(max(value, 0), 1))] = 200
    Image.fromarray(image).save(out / f"{name}.png")
    return f"{name}.png"


class CopyStage:
    """A replica stage with planted ground truth: a synthetic image is a copy when it equals a training image."""

    name = "replicas"

    class Params(Params):
        tolerance: float = 1e-3
        knob: int = 0  # changes nothing but the key: tests change it to force a re-run

    def __init__(self, params, runtime):
        self.params, self.runtime = params, runtime

    def requirements(self, inputs):
        return None

    def describe(self):
        return {"tolerance": self.params.tolerance, "knob": self.params.knob}

    def run(self, inputs, context):
        RUNS[self.name] += 1
        train = inputs.train.stack().reshape(len(inputs.train), -1)
        flagged = []
        for images, records in inputs.synthetic.iter_images(batch_size=8):
            for image, record in zip(images, records):
                if np.abs(train - image.reshape(1, -1)).max(axis=1).min() < self.params.tolerance:
                    flagged.append(record.id)
        share = rate_estimate(len(flagged), len(inputs.synthetic))
        (context.out_dir / "flagged.csv").write_text("id\n" + "".join(f"{i}\n" for i in flagged))
        return StageOutput(figures={"flagged_share": share, "holdout_flagged_share": rate_estimate(0, 6)},
                           artefacts={"bar": Artefact(_plot(context.out_dir, "bar", share.value), "plot",
                                                      "share flagged"),
                                      "table": Artefact("flagged.csv", "table", "flagged images")},
                           flagged_ids=flagged, details={"flagged": flagged})


def planted_stage(stage_name: str, figures: dict[str, Estimate], error: str | None = None,
                  skip: str | None = None, skipped_parts: dict[str, str] | None = None):
    """A stage class that reports fixed figures (or raises / skips)."""

    class Planted:
        name = stage_name

        class Params(Params):
            knob: int = 0

        def __init__(self, params, runtime):
            self.params = params

        def requirements(self, inputs):
            return skip

        def describe(self):
            return {"knob": self.params.knob}

        def run(self, inputs, context):
            RUNS[stage_name] += 1
            if error:
                raise RuntimeError(error)
            first = next(iter(figures.values()), None)
            artefacts = {"plot": Artefact(_plot(context.out_dir, "plot", first.value if first else 0.5), "plot",
                                          f"{stage_name} plot")}
            return StageOutput(figures=dict(figures), artefacts=artefacts, skipped=dict(skipped_parts or {}))

    Planted.__name__ = f"Planted_{stage_name}"
    return Planted


def est(value: float, lo: float, hi: float, n: int = 100, hib: bool = False) -> Estimate:
    return Estimate(value, lo, hi, n, hib, "bootstrap 95% (1000)")


GOOD_FIGURES = {
    "fidelity": {"fid_over_floor": est(1.5, 1.2, 1.9)},
    "utility": {"gap": est(0.03, -0.02, 0.08), "tstr_auc": est(0.78, 0.7, 0.85, hib=True)},
    "reid": {"risk_at_fpr_1pct": est(0.0, 0.0, 0.03), "sanity/verification_auc": est(0.9, 0.85, 0.95, hib=True)},
    "membership": {"best/auc": est(0.51, 0.45, 0.57), "best/tpr_at_fpr_1pct": est(0.01, 0.0, 0.03)},
}


def registry_with(**overrides) -> Registry:
    """The five stages: the copy detector as `replicas`, planted figures for the others; `overrides` replaces
    a stage class by name."""
    registry = Registry("stage")
    classes = {name: planted_stage(name, figures) for name, figures in GOOD_FIGURES.items()}
    classes["replicas"] = CopyStage
    classes.update(overrides)
    for name in ("fidelity", "utility", "reid", "membership", "replicas"):
        registry.register(name, classes[name])
    return registry


def lenient_gates(path: Path, replica_limit: float = 0.5) -> Path:
    """Default-like gates with a replica limit the tiny planted world can pass (its n is ~10)."""
    path.write_text(f"""
version: 1
required_stages: [fidelity, utility, reid, membership, replicas]
gates:
  - {{metric: replicas/flagged_share, op: "<=", threshold: {replica_limit}, on: value, severity: fail}}
  - {{metric: membership/best/auc, op: "<=", threshold: 0.6, on: ci_high, severity: fail}}
  - {{metric: reid/risk_at_fpr_1pct, op: "<=", threshold: 0.05, on: ci_high, severity: fail}}
  - {{metric: fidelity/fid_over_floor, op: "<=", threshold: 3.0, on: value, severity: warn}}
  - {{metric: utility/gap, op: "<=", threshold: 0.10, on: value, severity: warn}}
""")
    return path

