"""The replica stage of `audit run` (contract: `audit.stages`): does the generator copy training images?

Fit every scorer on the real training split, calibrate on the holdout split (the null: what genuinely new images
reach), score the synthetic images; write replicas.csv / .json, pairs.png and histograms.png into the stage's
folder, and report the flagged share (Wilson CI) with the ids of the flagged images.

What depends only on the data is built once per dataset and shared by every model audited on it
(`context.cache`): each scorer's fitted state (training-set signatures, embeddings, a trained encoder) keyed by the
training set's fingerprint + the scorer's parameters, and the holdout null scores keyed by both sets' fingerprints
+ the scorer's parameters. Holdout and synthetic images are streamed in batches; only the training set is held in
memory (the scorers search it), and its size is checked against `max_train_gb` before it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from attacks.replicas.base import DEFAULT_QUANTILE, ReplicaScores
from attacks.replicas.registry import DEFAULT_SCORERS, SCORERS, build_scorers, check_options
from audit.errors import AuditInputError
from audit.parallel import executor_of
from audit.registry import Params, Runtime
from audit.stages import Artefact, StageContext, StageInputs, StageOutput

SCORES_FIELDS = ("scores", "nearest", "topk_scores", "topk_index", "query_box", "train_box")


class ReplicaStageParams(Params):
    scorers: list[str] = Field(default_factory=lambda: list(DEFAULT_SCORERS),
                               description="replica scorers (default: the benchmarked default set)")
    quantile: float = Field(DEFAULT_QUANTILE, gt=0, lt=1, description="holdout quantile used as threshold")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                               description="declared parameters per scorer, e.g. {ncc_reg: {k: 20}}")
    top_pairs: int = Field(8, ge=1, description="pairs shown in pairs.png")
    max_train_gb: float = Field(4.0, gt=0, description="largest training set held in memory (float32)")

    @field_validator("scorers")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return SCORERS.parse_names(value, "replicas.scorers")


class LazyImages:
    """A dataset's images read on demand: `len`, integer/array/slice indexing, and batches."""

    def __init__(self, dataset, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        rows = np.atleast_1d(np.asarray(index, dtype=np.int64))
        out = np.stack([self.dataset.load(self.dataset.records[int(i)])[0] for i in rows])
        return out if np.ndim(index) else out[0]

    def batches(self):
        return (images for images, _ in self.dataset.iter_images(self.batch_size))


def weights_identity(params: dict[str, Any]) -> dict[str, Any]:
    """File identities (path, size, mtime — `stat` only) of every parameter naming an existing file or folder
    (weights, checkpoints), so that a cache entry misses when the file behind a path changes."""
    from audit.data.cache import file_identity

    out = {}
    for key, value in params.items():
        if isinstance(value, str) and value and Path(value).exists():
            path = Path(value)
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            out[key] = [file_identity(f) for f in files]
    return out


def save_arrays(folder: Path, name: str, arrays: dict[str, np.ndarray | None]) -> None:
    np.savez(folder / f"{name}.npz", **{k: v for k, v in arrays.items() if v is not None})


def load_arrays(folder: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def score_stage_on_workers(scorers: dict, null_keys: dict[str, dict], holdout, synthetic, executor, cache,
                           batch_size: int) -> tuple[dict[str, ReplicaScores], dict[str, ReplicaScores]]:
    """The stage's scoring on the executor's workers (`audit.parallel`): the fitted scorers shared once, the
    holdout scored (one pass, every scorer whose null is not cached) and the synthetic set scored (one pass, every
    scorer), in the batches the in-process loop streams; nulls cached as in process. → (holdout, synthetic)."""
    from attacks.replicas.pipeline import score_on_workers

    shared = executor.share(scorers)
    missing = [n for n in scorers if not (cache.path("replicas-null", null_keys[n]) / ".complete").is_file()]
    nulls = score_on_workers(shared, missing, holdout, executor, batch_size)[0] if missing else {}

    def build_null(folder: Path, name: str) -> None:
        if name not in nulls:  # cached when we looked, gone since: score it now
            nulls.update(score_on_workers(shared, [name], holdout, executor, batch_size)[0])
        result = nulls[name]
        save_arrays(folder, "null", {f: getattr(result, f) for f in SCORES_FIELDS})

    holdout_scores = {}
    for name in scorers:
        folder = cache.get_or_build("replicas-null", null_keys[name], lambda f, n=name: build_null(f, n))
        holdout_scores[name] = ReplicaScores(**{f: load_arrays(folder, "null").get(f) for f in SCORES_FIELDS})
    synthetic_scores = score_on_workers(shared, list(scorers), synthetic, executor, batch_size)[0]
    return holdout_scores, synthetic_scores


class ReplicaStage:
    name = "replicas"
    Params = ReplicaStageParams

    def __init__(self, params: ReplicaStageParams | None = None, runtime: Runtime | None = None):
        self.params = params if params is not None else ReplicaStageParams()
        self.runtime = runtime or Runtime()
        check_options(self.params.scorers, self.params.options, "replicas.options")

    def requirements(self, inputs: StageInputs) -> str | None:
        for label, dataset in (("synthetic images", inputs.synthetic), ("training images", inputs.train),
                               ("holdout images", inputs.holdout)):
            if dataset is None or len(dataset) == 0:
                return f"no {label} to compare"
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump(mode="json"),
                "scorers": {n: SCORERS.params(n, self.params.options.get(n)).model_dump(mode="json")
                            for n in self.params.scorers},
                "threshold_rule": "combined score > q-quantile of the holdout's combined scores"}

    # ----------------------------------------------------------------------------------------------- the work
    def _training_images(self, train) -> np.ndarray:
        need = len(train) * int(np.prod(train.shape)) * 4 / 2**30
        if need > self.params.max_train_gb:
            raise AuditInputError(None, f"replicas: the training set needs {need:.1f} GB in memory, above "
                                        f"replicas.max_train_gb = {self.params.max_train_gb}")
        return train.stack()

    def _fitted(self, name: str, scorer, train_key: dict, get_train, cache) -> None:
        """The scorer fitted on the training set: its cached state when there is one, else fitted (and cached
        when its state is plain arrays)."""
        if not getattr(scorer, "cacheable", False):
            scorer.fit(get_train())
            return
        fitted_now = []

        def build(folder: Path) -> None:
            scorer.fit(get_train())
            save_arrays(folder, "state", scorer.fitted_state())
            fitted_now.append(True)

        folder = cache.get_or_build("replicas-fit", {**train_key, "scorer": name}, build)
        if not fitted_now:
            scorer.restore(load_arrays(folder, "state"))

    def run(self, inputs: StageInputs, context: StageContext) -> StageOutput:
        from attacks.replicas.pipeline import (COMBINED, assemble_audit, chosen_pair_ssim, drop_unsupported,
                                               score_in_batches, suite_provenance, write_outputs)
        from audit.artifacts import dataset_fingerprint

        reason = self.requirements(inputs)
        if reason:
            raise AuditInputError(None, f"replicas: {reason}")
        runtime = context.runtime
        scorers, skipped = drop_unsupported(build_scorers(self.params.scorers, self.params.options, runtime),
                                            tuple(inputs.train.shape))
        provenance = suite_provenance()
        train_fp, holdout_fp = dataset_fingerprint(inputs.train), dataset_fingerprint(inputs.holdout)
        train_cache: dict[str, np.ndarray] = {}

        def get_train() -> np.ndarray:
            if "images" not in train_cache:
                train_cache["images"] = self._training_images(inputs.train)
            return train_cache["images"]

        holdout = LazyImages(inputs.holdout, runtime.batch_size)
        synthetic = LazyImages(inputs.synthetic, runtime.batch_size)
        holdout_scores: dict[str, ReplicaScores] = {}
        synthetic_scores: dict[str, ReplicaScores] = {}
        executor = executor_of(runtime)
        null_keys: dict[str, dict] = {}
        for name, scorer in scorers.items():
            params = scorer.params.model_dump(mode="json")
            key = {"train": train_fp, "params": params, "files": weights_identity(params), "seed": runtime.seed,
                   "suite": [provenance["version"], provenance["git_commit"]]}
            self._fitted(name, scorer, key, get_train, context.cache)
            null_keys[name] = {**key, "scorer": name, "holdout": holdout_fp}
            if not executor.in_process:
                continue  # scored below, every scorer in one pass over each set on the workers

            def build_null(folder: Path, scorer=scorer) -> None:
                result = score_in_batches(scorer, holdout.batches())
                save_arrays(folder, "null", {f: getattr(result, f) for f in SCORES_FIELDS})

            folder = context.cache.get_or_build("replicas-null", null_keys[name], build_null)
            holdout_scores[name] = ReplicaScores(**{f: load_arrays(folder, "null").get(f) for f in SCORES_FIELDS})
            synthetic_scores[name] = score_in_batches(scorer, synthetic.batches())
        if not executor.in_process:
            holdout_scores, synthetic_scores = score_stage_on_workers(scorers, null_keys, inputs.holdout,
                                                                      inputs.synthetic, executor, context.cache,
                                                                      runtime.batch_size)

        names = list(scorers)
        audit = assemble_audit(names, holdout_scores, synthetic_scores, self.params.quantile,
                               descriptions={n: s.describe() for n, s in scorers.items()},
                               crossfit_seed=runtime.seed)
        train_images = LazyImages(inputs.train, runtime.batch_size) if not train_cache else train_cache["images"]
        record_names = {"train": [r.id for r in inputs.train.records],
                        "synthetic": [r.id for r in inputs.synthetic.records]}
        parameters = {"quantile": self.params.quantile, "options": self.params.options,
                      "shape": list(inputs.train.shape),
                      "runtime": {"device": runtime.device, "batch_size": runtime.batch_size, "seed": runtime.seed}}
        pair_ssim = np.concatenate([
            chosen_pair_ssim(synthetic[start:start + runtime.batch_size],
                             train_images[audit.nearest[start:start + runtime.batch_size]], np.arange(
                                 len(audit.nearest[start:start + runtime.batch_size])), runtime.batch_size)
            for start in range(0, len(synthetic), runtime.batch_size)])
        summary = write_outputs(Path(context.out_dir), audit, {"synthetic": synthetic, "train": train_images},
                                record_names, parameters, top_pairs=self.params.top_pairs,
                                batch_size=runtime.batch_size, pair_ssim=pair_ssim,
                                extra={"skipped_scorers": skipped})

        figures = {"flagged_share": audit.flagged}
        if audit.holdout_crossfit is not None:
            figures["holdout_flagged_share_crossfit"] = audit.holdout_crossfit
        for n in names:
            figures[f"{n}/flagged_share"] = audit.calibrations[n].synthetic_flagged
        flagged_ids = [record_names["synthetic"][i] for i in np.flatnonzero(audit.is_replica)]
        artefacts = {"table": Artefact("replicas.csv", "table", "per synthetic image: nearest training image, "
                                                                "combined score, replica decision, each scorer"),
                     "data": Artefact("replicas.json", "data", "parameters, scorers, calibration, top pairs"),
                     "pairs": Artefact("pairs.png", "gallery", "the most similar synthetic/training pairs "
                                                               "(copied regions outlined)"),
                     "histograms": Artefact("histograms.png", "plot", "synthetic→train vs holdout→train scores")}
        details = {"threshold": audit.threshold, "holdout_flagged_in_sample": audit.calibrations[COMBINED]
                   .holdout_flagged.to_dict(), "calibration": summary["calibration"],
                   "top_pairs": summary["top_pairs"][:self.params.top_pairs],
                   "combination": summary["combined"]["describe"], "skipped_scorers": skipped,
                   "holdout_screened_as_copies": summary["holdout_screened_as_copies"]["n"],
                   "holdout_overlapping_training": summary["holdout_overlapping_training"]["n"],
                   "warnings": summary["warnings"]}
        return StageOutput(figures=figures, details=details, artefacts=artefacts, flagged_ids=flagged_ids)
