"""The replica audit: fit every scorer on the training images, score holdout and synthetic images, calibrate
each scorer and their combination on the holdout, and (for folders) write CSV, JSON and figures.

`audit_arrays` is the pure part (arrays in, results out) that benchmarks and other stages reuse;
`run_folder_audit` is what `audit replicas` calls.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attacks.replicas.base import ReplicaScorer, ReplicaScores
from attacks.replicas.calibrate import Calibration, calibrate, check_quantile, label_metrics, read_labels_csv
from attacks.replicas.combined import COMBINERS, DEFAULT_COMBINATION
from attacks.replicas.registry import make_scorer
from audit.errors import AuditInputError
from audit.progress import progress_bar

COMBINED = "combined"


@dataclass
class ReplicaAudit:
    scorers: list[str]
    holdout: dict[str, ReplicaScores]
    synthetic: dict[str, ReplicaScores]
    combiner: object  # a fitted combiner from attacks.replicas.combined
    combined_holdout: np.ndarray  # (H,)
    combined_synthetic: np.ndarray  # (Q,)
    nearest: np.ndarray  # (Q,) training index chosen by the scorer that decided the combined score
    decisive: list[str]  # (Q,) that scorer's name
    calibrations: dict[str, Calibration]  # per scorer + COMBINED
    timings: dict[str, float] = field(default_factory=dict)
    descriptions: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.calibrations[COMBINED].threshold

    @property
    def is_replica(self) -> np.ndarray:
        return self.combined_synthetic > self.threshold

    def synthetic_scores(self, name: str) -> np.ndarray:
        return self.combined_synthetic if name == COMBINED else self.synthetic[name].scores

    def holdout_scores(self, name: str) -> np.ndarray:
        return self.combined_holdout if name == COMBINED else self.holdout[name].scores


def audit_arrays(scorers: dict[str, ReplicaScorer], train: np.ndarray, holdout: np.ndarray, synthetic: np.ndarray,
                 quantile: float = 0.99, progress: bool = False,
                 combination: str = DEFAULT_COMBINATION) -> ReplicaAudit:
    """Every scorer fitted on `train`, applied to `holdout` (the null) and `synthetic`, then calibrated."""
    check_quantile(quantile)
    if len(holdout) == 0 or len(synthetic) == 0 or len(train) == 0:
        raise AuditInputError(None, "train, holdout and synthetic sets must each hold at least one image")
    holdout_scores: dict[str, ReplicaScores] = {}
    synthetic_scores: dict[str, ReplicaScores] = {}
    timings: dict[str, float] = {}
    descriptions: dict[str, Any] = {}
    bar = progress_bar(total=len(scorers), desc="replica scorers") if progress else None
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        scorer.fit(train)
        holdout_scores[name] = scorer.score(holdout)
        synthetic_scores[name] = scorer.score(synthetic)
        timings[name] = time.perf_counter() - t0
        describe = getattr(scorer, "describe", None)
        descriptions[name] = describe() if callable(describe) else {"name": name}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    combiner = COMBINERS[combination]().fit({n: s.scores for n, s in holdout_scores.items()})
    combined_holdout, _ = combiner.combine({n: s.scores for n, s in holdout_scores.items()})
    combined_synthetic, decisive = combiner.combine({n: s.scores for n, s in synthetic_scores.items()})
    names = list(scorers)
    nearest_by_scorer = np.stack([synthetic_scores[n].nearest for n in names], axis=1)
    nearest = nearest_by_scorer[np.arange(len(decisive)), decisive]

    calibrations = {n: calibrate(n, holdout_scores[n].scores, synthetic_scores[n].scores, quantile) for n in names}
    calibrations[COMBINED] = calibrate(COMBINED, combined_holdout, combined_synthetic, quantile)
    descriptions[COMBINED] = combiner.describe()
    return ReplicaAudit(scorers=names, holdout=holdout_scores, synthetic=synthetic_scores, combiner=combiner,
                        combined_holdout=combined_holdout, combined_synthetic=combined_synthetic,
                        nearest=nearest.astype(np.int64), decisive=[names[i] for i in decisive],
                        calibrations=calibrations, timings=timings, descriptions=descriptions)


# --------------------------------------------------------------------------------------------- folders


def relative_names(dataset, folder: Path) -> list[str]:
    """File names relative to their folder (what the CSV reports), whatever ids a manifest gives."""
    out = []
    for record in dataset.records:
        path = Path(record.path)
        try:
            out.append(path.relative_to(folder).as_posix())
        except ValueError:
            out.append(path.as_posix())
    return out


def load_folders(train_dir: Path, holdout_dir: Path, synthetic_dir: Path):
    """The three image sets at one shape (the training set's first image's), plus their file names."""
    from audit.data.readers.folder import open_folder

    for folder, flag in ((train_dir, "--train"), (holdout_dir, "--holdout"), (synthetic_dir, "--synthetic")):
        if not Path(folder).is_dir():
            raise AuditInputError(folder, f"{flag} is not a folder")
    train_ds = open_folder(train_dir, name="train")
    shape = train_ds.shape
    holdout_ds = open_folder(holdout_dir, shape=shape, name="holdout")
    synthetic_ds = open_folder(synthetic_dir, shape=shape, name="synthetic")
    arrays = {name: ds.stack(progress=f"reading {name}")
              for name, ds in (("train", train_ds), ("holdout", holdout_ds), ("synthetic", synthetic_ds))}
    names = {"train": relative_names(train_ds, Path(train_dir)),
             "holdout": relative_names(holdout_ds, Path(holdout_dir)),
             "synthetic": relative_names(synthetic_ds, Path(synthetic_dir))}
    return arrays, names, shape


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def write_csv(path: Path, audit: ReplicaAudit, synthetic_names: list[str], train_names: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["synthetic", "nearest_train", "score", "is_replica", *audit.scorers])
        flagged = audit.is_replica
        for i, name in enumerate(synthetic_names):
            writer.writerow([name, train_names[audit.nearest[i]], _fmt(audit.combined_synthetic[i]),
                             "true" if flagged[i] else "false",
                             *(_fmt(audit.synthetic[s].scores[i]) for s in audit.scorers)])


def run_folder_audit(train_dir: str | Path, holdout_dir: str | Path, synthetic_dir: str | Path,
                     out_dir: str | Path, scorer_names: list[str], quantile: float = 0.99,
                     labels_csv: str | Path | None = None, deepssim_checkpoint: str | Path | None = None,
                     device: str = "cpu", batch_size: int = 64, top_pairs: int = 8, seed: int = 0) -> dict:
    """Everything `audit replicas` does; returns the JSON summary it wrote."""
    from attacks.replicas.plots import plot_histograms, plot_top_pairs

    check_quantile(quantile)
    if batch_size < 1:
        raise AuditInputError(None, f"--batch-size must be >= 1, got {batch_size}")
    if deepssim_checkpoint is not None and not Path(deepssim_checkpoint).exists():
        raise AuditInputError(deepssim_checkpoint, "DeepSSIM checkpoint not found")
    train_dir, holdout_dir, synthetic_dir, out_dir = map(Path, (train_dir, holdout_dir, synthetic_dir, out_dir))
    # scorers are built (and their parameters validated, checkpoints loaded) before any image is read
    options = {"device": device, "batch_size": batch_size, "seed": seed}
    scorers = {name: make_scorer(name, **options, **({"checkpoint": deepssim_checkpoint} if name == "deepssim"
                                                     else {}))
               for name in scorer_names}
    arrays, names, shape = load_folders(train_dir, holdout_dir, synthetic_dir)
    labels = read_labels_csv(labels_csv, names["synthetic"]) if labels_csv else None

    audit = audit_arrays(scorers, arrays["train"], arrays["holdout"], arrays["synthetic"], quantile, progress=True)

    pair_ssim = chosen_pair_ssim(arrays["synthetic"], arrays["train"], audit.nearest, batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": "replicas.csv", "json": "replicas.json", "pairs": "pairs.png", "histograms": "histograms.png"}
    write_csv(out_dir / files["csv"], audit, names["synthetic"], names["train"])
    plot_top_pairs(out_dir / files["pairs"], arrays["synthetic"], arrays["train"], audit, names["synthetic"],
                   names["train"], top=top_pairs, pair_ssim=pair_ssim)
    plot_histograms(out_dir / files["histograms"], audit)

    summary: dict[str, Any] = {
        "parameters": {"train": str(train_dir), "holdout": str(holdout_dir), "synthetic": str(synthetic_dir),
                       "n_train": len(arrays["train"]), "n_holdout": len(arrays["holdout"]),
                       "n_synthetic": len(arrays["synthetic"]), "shape": list(shape), "scorers": audit.scorers,
                       "quantile": quantile, "threshold_rule": "score > q-quantile of holdout->train scores",
                       "deepssim": str(deepssim_checkpoint) if deepssim_checkpoint else None,
                       "labels": str(labels_csv) if labels_csv else None, "device": device,
                       "batch_size": batch_size, "seed": seed},
        "scorers": {n: {**audit.calibrations[n].to_dict(), "describe": audit.descriptions.get(n),
                        "seconds": round(audit.timings.get(n, 0.0), 3)} for n in audit.scorers},
        "combined": {**audit.calibrations[COMBINED].to_dict(), "describe": audit.descriptions[COMBINED]},
        "flagged": audit.calibrations[COMBINED].synthetic_flagged.to_dict(),
        "top_pairs": [{"synthetic": names["synthetic"][q], "nearest_train": names["train"][audit.nearest[q]],
                       "score": float(audit.combined_synthetic[q]), "is_replica": bool(audit.is_replica[q]),
                       "decided_by": audit.decisive[q], "pair_ssim": float(pair_ssim[q])}
                      for q in np.argsort(-audit.combined_synthetic, kind="stable")[:20]],
        "files": files,
    }
    if labels is not None:
        index = {name: i for i, name in enumerate(names["synthetic"])}
        rows = np.array([index[f] for f in labels])
        truth = np.array(list(labels.values()), dtype=bool)
        summary["labels"] = {n: label_metrics(truth, audit.synthetic_scores(n)[rows], audit.calibrations[n].threshold)
                             for n in [*audit.scorers, COMBINED]}
    with open(out_dir / files["json"], "w") as fh:
        json.dump(without_nan(summary), fh, indent=2, default=_json_default, allow_nan=False)
    return summary


def without_nan(obj):
    """NaN/inf → null, so the JSON is valid for every reader."""
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [without_nan(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


def chosen_pair_ssim(synthetic: np.ndarray, train: np.ndarray, nearest: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """SSIM of each synthetic image with its reported nearest training image, in the best mirror orientation
    (the voxel scorers search mirrored queries too) — the figure RELICT's image level reports for a pair."""
    from audit.metrics.similarity import ssim

    partners = train[nearest]
    best = ssim(synthetic, partners, batch_size=batch_size)
    for axis in range(1, synthetic.ndim):
        best = np.maximum(best, ssim(np.ascontiguousarray(np.flip(synthetic, axis=axis)), partners,
                                     batch_size=batch_size))
    return best


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
