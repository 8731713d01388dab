"""The replica audit: fit every scorer on the training images, score holdout and synthetic images, calibrate
each scorer and their combination on the holdout, and (for folders) write CSV, JSON and figures.

`score_sets` / `assemble_audit` are the pure parts (arrays in, results out) that benchmarks and the `audit run`
stage reuse; `audit_arrays` chains them; `run_folder_audit` is what `audit replicas` calls.
"""

from __future__ import annotations

import csv
import functools
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from attacks.replicas.base import ReplicaScorer, ReplicaScores
from attacks.replicas.calibrate import Calibration, calibrate, check_quantile, label_metrics, read_labels_csv
from attacks.replicas.combined import DEFAULT_COMBINATION, calibration_rows, make_combiner
from audit.errors import AuditInputError
from audit.metrics.statistics import Estimate, rate_estimate
from audit.parallel import executor_of, image_loader, resolve
from audit.progress import progress_bar

COMBINED = "combined"
# `audit replicas` exits 1 when the Wilson 95% lower bound of the flagged share exceeds this. The threshold
# flags 1 − q = 1% of genuinely new images by construction, but on the benchmark the realised share of new images
# above it reached 3.3% (a finite holdout is never exactly like new images); 5% sits above that, so an honest
# generator does not fail by calibration error, while a memorising one (the demo's control: 78%, lower bound 67%)
# fails plainly.
DEFAULT_GATE = 0.05


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
    holdout_crossfit: Estimate | None = None  # the rule's flagged share on held-out halves it was not fitted on

    @property
    def threshold(self) -> float:
        return self.calibrations[COMBINED].threshold

    @property
    def is_replica(self) -> np.ndarray:
        return self.combined_synthetic > self.threshold

    @property
    def flagged(self) -> Estimate:
        return self.calibrations[COMBINED].synthetic_flagged

    def synthetic_scores(self, name: str) -> np.ndarray:
        return self.combined_synthetic if name == COMBINED else self.synthetic[name].scores

    def holdout_scores(self, name: str) -> np.ndarray:
        return self.combined_holdout if name == COMBINED else self.holdout[name].scores

    def level(self, q: int) -> str:
        """The level whose statistic decided synthetic image q's combined score ('whole' or 'local'; always
        'whole' under a combination without levels)."""
        level_of = getattr(self.combiner, "level_of", None)
        return level_of(self.decisive[q]) if level_of else "whole"

    def level_thresholds(self) -> dict[str, float]:
        """The combined threshold on each level's own scale (empty under a combination without levels)."""
        thresholds = getattr(self.combiner, "level_thresholds", None)
        return thresholds(self.threshold) if thresholds else {}

    def region(self, q: int) -> tuple[str, np.ndarray, np.ndarray] | None:
        """A matched region for synthetic image q: (scorer, query box, training box) from a local scorer whose
        nearest training image is the reported one (the decisive scorer first), or None."""
        order = [self.decisive[q]] + [s for s in self.scorers if s != self.decisive[q]]
        for name in order:
            result = self.synthetic[name]
            if result.query_box is not None and result.nearest[q] == self.nearest[q]:
                return name, result.query_box[q], result.train_box[q]
        return None


def drop_unsupported(scorers: dict[str, ReplicaScorer], shape: tuple[int, ...]
                     ) -> tuple[dict[str, ReplicaScorer], dict[str, str]]:
    """The scorers that can score images of `shape`, and {name: why not} for the others (recorded in the outputs
    as `skipped_scorers`). None left is an input error naming every reason."""
    skipped = {name: reason for name, scorer in scorers.items()
               if (reason := getattr(scorer, "unsupported", lambda _: None)(tuple(shape)))}
    kept = {name: scorer for name, scorer in scorers.items() if name not in skipped}
    if not kept:
        raise AuditInputError(None, "no scorer can score these images: " +
                              "; ".join(f"{name}: {reason}" for name, reason in skipped.items()))
    return kept, skipped


def report_skipped(skipped: dict[str, str]) -> None:
    """One line on stderr per skipped scorer (the run goes on without it)."""
    import sys

    for name, reason in skipped.items():
        print(f"note: scorer {name} skipped: {reason}", file=sys.stderr)


def score_in_batches(scorer: ReplicaScorer, images: np.ndarray | Iterable[np.ndarray]) -> ReplicaScores:
    """Score an array, or a stream of arrays (memory bounded by the batch; scores are per query, so batching
    does not change them)."""
    if isinstance(images, np.ndarray):
        return scorer.score(images)
    return ReplicaScores.concatenate([scorer.score(batch) for batch in images])


class ScoreReplicaQueries:
    """One batch of query records on a worker (`audit.parallel`): its images read once, then scored by every
    fitted scorer named (the scorers arrive once per worker, fitted). → per record {scorer: (its scores,
    seconds)}, the seconds being the batch's scoring time of that scorer shared equally among its images."""

    def __init__(self, scorers, loader, names: list[str]):
        self.scorers = resolve(scorers)  # {name: fitted scorer}
        self.loader = loader  # the query dataset without its record list: decoder, preprocessing, cache
        self.names = list(names)

    def __call__(self, records) -> list[dict[str, tuple[ReplicaScores, float]]]:
        images = np.stack([self.loader.load(r)[0] for r in records])
        rows: list[dict[str, tuple[ReplicaScores, float]]] = [{} for _ in records]
        for name in self.names:
            t0 = time.perf_counter()
            result = self.scorers[name].score(images)
            seconds = (time.perf_counter() - t0) / len(records)
            for i, row in enumerate(rows):
                row[name] = (result.take(slice(i, i + 1)), seconds)
        return rows


def score_on_workers(shared_scorers, names: list[str], dataset, executor, batch_size: int,
                     progress: str | None = None) -> tuple[dict[str, ReplicaScores], dict[str, float]]:
    """The named scorers applied to every image of `dataset` on the executor's workers: records travel in batches
    of `batch_size` consecutive records (the batches `dataset.iter_images` streams in process), each worker reads
    its images and holds the fitted scorers (`shared_scorers`: `executor.share({name: scorer})`); scores come
    back in record order. → ({scorer: scores}, {scorer: scoring seconds summed over the workers})."""
    if len(dataset) == 0:
        raise AuditInputError(None, f"dataset '{dataset.name}' has no images to score")
    bar = progress_bar(total=len(dataset), desc=progress) if progress else None
    rows = executor.map_batches(ScoreReplicaQueries, dataset.records, batch_size=batch_size,
                                constructor_kwargs={"scorers": shared_scorers, "loader": image_loader(dataset),
                                                    "names": list(names)},
                                on_group=(lambda _, r: bar.update(len(r))) if bar is not None else None)
    if bar is not None:
        bar.close()
    scores = {name: ReplicaScores.concatenate([row[name][0] for row in rows]) for name in names}
    seconds = {name: float(sum(row[name][1] for row in rows)) for name in names}
    return scores, seconds


def score_sets_on_workers(scorers: dict[str, ReplicaScorer], train: np.ndarray, sets: dict[str, Any], executor,
                          batch_size: int, progress: bool = False
                          ) -> tuple[dict[str, dict[str, ReplicaScores]], dict[str, float], dict[str, Any]]:
    """`score_sets` with the scoring on the executor's workers: every scorer fitted on `train` here, the fitted
    scorers shared once (Ray's object store), each named query set (an `ImageDataset`: records travel) read once
    and scored by all of them. Seconds per scorer: its fit plus its scoring time summed over the workers."""
    timings: dict[str, float] = {}
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        scorer.fit(train)
        timings[name] = time.perf_counter() - t0
    shared = executor.share(scorers)
    out: dict[str, dict[str, ReplicaScores]] = {}
    for set_name, dataset in sets.items():
        out[set_name], seconds = score_on_workers(shared, list(scorers), dataset, executor, batch_size,
                                                  f"replica scores ({set_name})" if progress else None)
        for name, value in seconds.items():
            timings[name] += value
    return out, timings, {name: scorer.describe() for name, scorer in scorers.items()}


def score_sets(scorers: dict[str, ReplicaScorer], train: np.ndarray, sets: dict[str, Any],
               progress: bool = False) -> tuple[dict[str, dict[str, ReplicaScores]], dict[str, float], dict[str, Any]]:
    """Every scorer fitted on `train`, then applied to each named query set (an array, or a callable returning a
    fresh iterator of arrays). → ({set: {scorer: scores}}, seconds per scorer, describe() per scorer).
    In process; `score_sets_on_workers` is the same on an executor's workers."""
    out: dict[str, dict[str, ReplicaScores]] = {name: {} for name in sets}
    timings: dict[str, float] = {}
    descriptions: dict[str, Any] = {}
    bar = progress_bar(total=len(scorers), desc="replica scorers") if progress else None
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        scorer.fit(train)
        for set_name, images in sets.items():
            out[set_name][name] = score_in_batches(scorer, images() if callable(images) else images)
        timings[name] = time.perf_counter() - t0
        descriptions[name] = scorer.describe()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out, timings, descriptions


def assemble_audit(names: list[str], holdout_scores: dict[str, ReplicaScores],
                   synthetic_scores: dict[str, ReplicaScores], quantile: float = 0.99,
                   combination: str = DEFAULT_COMBINATION, timings: dict[str, float] | None = None,
                   descriptions: dict[str, Any] | None = None, crossfit_seed: int = 0) -> ReplicaAudit:
    """Calibrate every scorer and the combination on the holdout scores, decide the synthetic images."""
    check_quantile(quantile)
    combiner = make_combiner(combination).fit({n: holdout_scores[n].scores for n in names})
    combined_holdout, _ = combiner.combine({n: holdout_scores[n].scores for n in names})
    combined_synthetic, decisive = combiner.combine({n: synthetic_scores[n].scores for n in names})
    nearest_by_scorer = np.stack([synthetic_scores[n].nearest for n in names], axis=1)
    nearest = nearest_by_scorer[np.arange(len(decisive)), decisive]
    # holdout images overlapping training or screened as copies of it set no threshold, the scorers' own included
    kept = calibration_rows(combiner, len(combined_holdout))
    calibrations = {n: calibrate(n, holdout_scores[n].scores[kept], synthetic_scores[n].scores, quantile)
                    for n in names}
    calibrations[COMBINED] = calibrate(COMBINED, combined_holdout[kept], combined_synthetic, quantile)
    descriptions = dict(descriptions or {})
    descriptions[COMBINED] = combiner.describe()
    crossfit = crossfit_flagged_share({n: holdout_scores[n].scores for n in names}, quantile, combination,
                                      crossfit_seed, kept=kept)
    return ReplicaAudit(scorers=list(names), holdout=holdout_scores, synthetic=synthetic_scores, combiner=combiner,
                        combined_holdout=combined_holdout, combined_synthetic=combined_synthetic,
                        nearest=nearest.astype(np.int64), decisive=[names[i] for i in decisive],
                        calibrations=calibrations, timings=dict(timings or {}), descriptions=descriptions,
                        holdout_crossfit=crossfit)


def audit_arrays(scorers: dict[str, ReplicaScorer], train: np.ndarray, holdout: np.ndarray, synthetic: np.ndarray,
                 quantile: float = 0.99, progress: bool = False,
                 combination: str = DEFAULT_COMBINATION) -> ReplicaAudit:
    """Every scorer fitted on `train`, applied to `holdout` (the null) and `synthetic`, then calibrated."""
    check_quantile(quantile)
    if len(holdout) == 0 or len(synthetic) == 0 or len(train) == 0:
        raise AuditInputError(None, "train, holdout and synthetic sets must each hold at least one image")
    scores, timings, descriptions = score_sets(scorers, train, {"holdout": holdout, "synthetic": synthetic},
                                               progress)
    return assemble_audit(list(scorers), scores["holdout"], scores["synthetic"], quantile, combination, timings,
                          descriptions)


def audit_on_workers(scorers: dict[str, ReplicaScorer], train: np.ndarray, holdout, synthetic, executor,
                     batch_size: int, quantile: float = 0.99, combination: str = DEFAULT_COMBINATION) -> ReplicaAudit:
    """`audit_arrays` with the holdout and synthetic datasets scored on the executor's workers (records travel)."""
    check_quantile(quantile)
    if len(holdout) == 0 or len(synthetic) == 0 or len(train) == 0:
        raise AuditInputError(None, "train, holdout and synthetic sets must each hold at least one image")
    scores, timings, descriptions = score_sets_on_workers(scorers, train, {"holdout": holdout, "synthetic": synthetic},
                                                          executor, batch_size, progress=True)
    return assemble_audit(list(scorers), scores["holdout"], scores["synthetic"], quantile, combination, timings,
                          descriptions)


def crossfit_flagged_share(holdout_scores: dict[str, np.ndarray], quantile: float,
                           combination: str = DEFAULT_COMBINATION, seed: int = 0,
                           kept: np.ndarray | None = None) -> Estimate | None:
    """The whole rule (combiner and threshold) fitted on one random half of the holdout and applied to the other,
    both ways; the pooled share of held-out images flagged, Wilson CI. An honest estimate of how often the
    rule flags a genuinely new image (at half the calibration size), unlike the in-sample share (≈ 1 − q by
    construction). `kept`: the rows the rule fitted on the whole holdout calibrates on (default: fitted here);
    the others (copies of training images by the leak screen or the overlap rule) are in neither half's fit
    nor count. None when the holdout has fewer than 4 images."""
    n = len(next(iter(holdout_scores.values())))
    if n < 4:
        return None
    if kept is None:
        kept = calibration_rows(make_combiner(combination).fit(holdout_scores), n)
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2:])
    halves = tuple(h[np.asarray(kept, bool)[h]] for h in halves)
    flagged = counted = 0
    for fit_rows, test_rows in (halves, halves[::-1]):
        if len(fit_rows) < 2 or len(test_rows) == 0:
            return None
        combiner = make_combiner(combination).fit({s: v[fit_rows] for s, v in holdout_scores.items()})
        null, _ = combiner.combine({s: v[fit_rows] for s, v in holdout_scores.items()})
        threshold = float(np.quantile(null[calibration_rows(combiner, len(null))], quantile))
        test_scores = {s: v[test_rows] for s, v in holdout_scores.items()}
        test, _ = combiner.combine(test_scores)
        new_images = ~overlapping_holdout(combiner, test_scores)  # the rule's rate on new images only
        flagged += int((test[new_images] > threshold).sum())
        counted += int(new_images.sum())
    if counted == 0:
        return None
    estimate = rate_estimate(flagged, counted, higher_is_better=False)
    return Estimate(estimate.value, estimate.ci_low, estimate.ci_high, estimate.n, False,
                    estimate.method + ", cross-fitted on holdout halves")


def overlapping_holdout(combiner, holdout_scores: dict[str, np.ndarray]) -> np.ndarray:
    """(H,) bool: holdout images the combiner's rule would leave out of a calibration as overlapping training
    images (none for a rule without that check)."""
    overlaps = getattr(combiner, "overlaps_training", None)
    if overlaps is None:
        return np.zeros(len(next(iter(holdout_scores.values()))), bool)
    return overlaps(holdout_scores)


def gate_exceeded(flagged: Estimate, gate: float) -> bool:
    """True when the flagged share is significantly above `gate` (its CI lower bound exceeds it)."""
    return bool(flagged.ci_low == flagged.ci_low and flagged.ci_low > gate)


# --------------------------------------------------------------------------------------------- provenance


@functools.lru_cache(maxsize=1)
def suite_provenance() -> dict[str, Any]:
    """The suite's version and, when run from a git checkout, its commit (and whether files differ from it)."""
    import audit

    root = Path(__file__).resolve().parents[2]
    out: dict[str, Any] = {"version": audit.__version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def audit_summary(audit: ReplicaAudit, names: dict[str, list[str]], pair_ssim: np.ndarray,
                  parameters: dict[str, Any]) -> dict[str, Any]:
    """What replicas.json holds: provenance, parameters, every scorer's full description and calibration, the
    combination (rule, weights, tail fits), the flagged shares and the top pairs."""
    summary: dict[str, Any] = {
        "suite": suite_provenance(),
        "parameters": {**parameters, "scorers": audit.scorers,
                       "threshold_rule": "score > q-quantile of holdout->train scores"},
        "calibration": {"n_train": len(names["train"]), "n_holdout": len(audit.combined_holdout),
                        "n_synthetic": len(audit.combined_synthetic),
                        "holdout_images_above_threshold_expected": (1 - parameters["quantile"])
                        * len(audit.combined_holdout)},
        "scorers": {n: {**audit.calibrations[n].to_dict(), "describe": audit.descriptions.get(n),
                        "seconds": round(audit.timings.get(n, 0.0), 3)} for n in audit.scorers},
        "combined": {**audit.calibrations[COMBINED].to_dict(), "describe": audit.descriptions[COMBINED],
                     "level_thresholds": audit.level_thresholds()},
        "holdout_overlapping_training": holdout_overlap(audit, names),
        "holdout_screened_as_copies": holdout_screened(audit, names),
        "flagged": audit.flagged.to_dict(),
        "holdout_flagged_crossfit": audit.holdout_crossfit.to_dict() if audit.holdout_crossfit else None,
        "top_pairs": [],
    }
    summary["warnings"] = holdout_warnings(summary)
    for q in np.argsort(-audit.combined_synthetic, kind="stable")[:20]:
        pair = {"synthetic": names["synthetic"][q], "nearest_train": names["train"][audit.nearest[q]],
                "score": float(audit.combined_synthetic[q]), "is_replica": bool(audit.is_replica[q]),
                "decided_by": audit.decisive[q], "level": audit.level(q), "pair_ssim": float(pair_ssim[q])}
        region = audit.region(q)
        if region is not None:
            pair["region"] = {"scorer": region[0], "synthetic_box": region[1].tolist(),
                              "train_box": region[2].tolist()}
        summary["top_pairs"].append(pair)
    return summary


def holdout_overlap(audit: ReplicaAudit, names: dict[str, list[str]]) -> dict[str, Any]:
    """Holdout images left out of the calibration because they hold a region identical to a training image —
    the holdout is then not disjoint from the training set (the same scan twice, neighbouring frames, a leak)."""
    left_out = np.flatnonzero(left_out_rows(audit)["overlap"])
    return {"n": int(len(left_out)), "files": [names["holdout"][i] for i in left_out[:50]],
            "rule": "a local score >= the combination's overlap_ncc (a whole window identical up to contrast): not "
                    "a new image, so not part of the null; check the split"}


def holdout_screened(audit: ReplicaAudit, names: dict[str, list[str]]) -> dict[str, Any]:
    """Holdout images the leak screen left out of the calibration (attacks/replicas/screen.py): some scorer's
    score no new image should reach, i.e. (near-)copies of training images — a leaky split."""
    rows = left_out_rows(audit)["screened"]
    screen = getattr(audit.combiner, "screen", None)
    by_scorer = {} if screen is None else {
        s: [names["holdout"][i] for i in np.flatnonzero(v)[:50]] for s, v in screen.by_scorer.items() if v.any()}
    return {"n": int(rows.sum()), "files": [names["holdout"][i] for i in np.flatnonzero(rows)[:50]],
            "by_scorer": by_scorer,
            "rule": screen.describe()["rule"] if screen is not None else "off"}


def left_out_rows(audit: ReplicaAudit) -> dict[str, np.ndarray]:
    """{"overlap": (H,) bool, "screened": (H,) bool} of the holdout images left out of the calibration (an image
    both overlapping and screened counts as overlapping)."""
    n = len(audit.combined_holdout)
    left_out = ~calibration_rows(audit.combiner, n)
    overlap = left_out & overlapping_holdout(audit.combiner, {s: audit.holdout_scores(s) for s in audit.scorers})
    return {"overlap": overlap, "screened": left_out & ~overlap}


def holdout_warnings(summary: dict[str, Any]) -> list[str]:
    """The plain-language warnings a run's summary carries about its holdout (empty when it is clean)."""
    out = []
    screened = summary.get("holdout_screened_as_copies") or {}
    if screened.get("n"):
        out.append(f"{screened['n']} holdout image(s) are near-copies of training images (the leak screen: a "
                   f"score no new image should reach) and were left out of the calibration — the split leaks "
                   f"(same patient/scan on both sides?); see replicas.json holdout_screened_as_copies")
    overlap = summary.get("holdout_overlapping_training") or {}
    if overlap.get("n"):
        out.append(f"{overlap['n']} holdout image(s) hold a region identical to a training image and were left "
                   f"out of the calibration; see replicas.json holdout_overlapping_training")
    return out


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


def open_folders(train_dir: Path, holdout_dir: Path, synthetic_dir: Path):
    """The three folders as datasets at one shape (the training set's first image's), plus their file names."""
    from audit.data.readers.folder import open_folder

    for folder, flag in ((train_dir, "--train"), (holdout_dir, "--holdout"), (synthetic_dir, "--synthetic")):
        if not Path(folder).is_dir():
            raise AuditInputError(folder, f"{flag} is not a folder")
    train_ds = open_folder(train_dir, name="train")
    shape = train_ds.shape
    datasets = {"train": train_ds, "holdout": open_folder(holdout_dir, shape=shape, name="holdout"),
                "synthetic": open_folder(synthetic_dir, shape=shape, name="synthetic")}
    folders = {"train": train_dir, "holdout": holdout_dir, "synthetic": synthetic_dir}
    names = {name: relative_names(ds, Path(folders[name])) for name, ds in datasets.items()}
    return datasets, names, shape


def load_folders(train_dir: Path, holdout_dir: Path, synthetic_dir: Path, sets=("train", "holdout", "synthetic")):
    """The image sets (`sets` of the three) at one shape as arrays, plus their file names and the datasets."""
    datasets, names, shape = open_folders(train_dir, holdout_dir, synthetic_dir)
    arrays = {name: datasets[name].stack(progress=f"reading {name}") for name in sets}
    return arrays, names, shape, datasets


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def write_csv(path: Path, audit: ReplicaAudit, synthetic_names: list[str], train_names: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        # flagged_by (last, after the existing columns): the level that raised the flag, empty when not flagged
        writer.writerow(["synthetic", "nearest_train", "score", "is_replica", *audit.scorers, "flagged_by"])
        flagged = audit.is_replica
        for i, name in enumerate(synthetic_names):
            writer.writerow([name, train_names[audit.nearest[i]], _fmt(audit.combined_synthetic[i]),
                             "true" if flagged[i] else "false",
                             *(_fmt(audit.synthetic[s].scores[i]) for s in audit.scorers),
                             audit.level(i) if flagged[i] else ""])
    tmp.replace(path)


def write_outputs(out_dir: Path, audit: ReplicaAudit, arrays: dict[str, Any], names: dict[str, list[str]],
                  parameters: dict[str, Any], labels: dict[str, bool] | None = None, top_pairs: int = 8,
                  batch_size: int = 64, extra: dict[str, Any] | None = None,
                  pair_ssim: np.ndarray | None = None) -> dict[str, Any]:
    """replicas.csv, replicas.json, pairs.png, histograms.png in `out_dir`; returns the JSON summary.
    `arrays` needs "synthetic" and "train" (the pairs' images; arrays, or anything indexable like them);
    `pair_ssim` is computed from them when not given."""
    from attacks.replicas.plots import plot_histograms, plot_top_pairs
    from audit.jsonio import write_json_atomic

    if pair_ssim is None:
        pair_ssim = chosen_pair_ssim(arrays["synthetic"], arrays["train"], audit.nearest, batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": "replicas.csv", "json": "replicas.json", "pairs": "pairs.png", "histograms": "histograms.png"}
    write_csv(out_dir / files["csv"], audit, names["synthetic"], names["train"])
    plot_top_pairs(out_dir / files["pairs"], arrays["synthetic"], arrays["train"], audit, names["synthetic"],
                   names["train"], top=top_pairs, pair_ssim=pair_ssim)
    plot_histograms(out_dir / files["histograms"], audit)
    summary = audit_summary(audit, names, pair_ssim, parameters)
    summary["files"] = files
    summary.update(extra or {})
    if labels is not None:
        index = {name: i for i, name in enumerate(names["synthetic"])}
        rows = np.array([index[f] for f in labels])
        truth = np.array(list(labels.values()), dtype=bool)
        summary["labels"] = {n: label_metrics(truth, audit.synthetic_scores(n)[rows], audit.calibrations[n].threshold)
                             for n in [*audit.scorers, COMBINED]}
    write_json_atomic(out_dir / files["json"], summary)
    return summary


def run_folder_audit(train_dir: str | Path, holdout_dir: str | Path, synthetic_dir: str | Path,
                     out_dir: str | Path, scorer_names: list[str], quantile: float = 0.99,
                     labels_csv: str | Path | None = None, options: dict[str, dict[str, Any]] | None = None,
                     runtime=None, top_pairs: int = 8, gate: float = DEFAULT_GATE, preset: str | None = None) -> dict:
    """Everything `audit replicas` does; returns the JSON summary it wrote."""
    from attacks.replicas.registry import build_scorers
    from audit.registry import Runtime

    check_quantile(quantile)
    runtime = runtime or Runtime()
    if runtime.batch_size < 1:
        raise AuditInputError(None, f"--batch-size must be >= 1, got {runtime.batch_size}")
    if not 0.0 <= gate < 1.0:
        raise AuditInputError(None, f"--gate must be in [0, 1), got {gate}")
    train_dir, holdout_dir, synthetic_dir, out_dir = map(Path, (train_dir, holdout_dir, synthetic_dir, out_dir))
    # scorers are built (parameters validated, checkpoints loaded) before any image is read
    scorers = build_scorers(scorer_names, options, runtime.with_(progress=True))
    executor = executor_of(runtime)
    # on workers the holdout is read where it is scored (records travel), not here
    arrays, names, shape, datasets = load_folders(train_dir, holdout_dir, synthetic_dir, (
        "train", "holdout", "synthetic") if executor.in_process else ("train", "synthetic"))
    scorers, skipped = drop_unsupported(scorers, shape)
    report_skipped(skipped)
    labels = read_labels_csv(labels_csv, names["synthetic"]) if labels_csv else None

    if executor.in_process:
        audit = audit_arrays(scorers, arrays["train"], arrays["holdout"], arrays["synthetic"], quantile,
                             progress=True)
    else:
        audit = audit_on_workers(scorers, arrays["train"], datasets["holdout"], datasets["synthetic"], executor,
                                 runtime.batch_size, quantile)
    parameters = {"train": str(train_dir), "holdout": str(holdout_dir), "synthetic": str(synthetic_dir),
                  "shape": list(shape), "preset": preset, "quantile": quantile, "options": options or {},
                  "labels": str(labels_csv) if labels_csv else None, "gate": gate,
                  "runtime": {"device": runtime.device, "batch_size": runtime.batch_size, "seed": runtime.seed}}
    gate_result = {"gate": {"value": gate, "rule": "exit 1 when the flagged share's Wilson 95% lower bound exceeds it",
                            "exceeded": gate_exceeded(audit.flagged, gate)}, "skipped_scorers": skipped}
    return write_outputs(out_dir, audit, arrays, names, parameters, labels, top_pairs, runtime.batch_size,
                         extra=gate_result)


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
