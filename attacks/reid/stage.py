"""`ReidStage`: the re-identification stage of `audit run` (and what `audit attack reid` runs).

Can an attacker link a synthetic image back to a training patient? The attacker (`attacks.reid.attacker`) is
trained once per training set (cached in `context.cache`), checked on held-out real patients (sanity), then
used on the synthetic images: (a) mAP@R against their source patients beside a permutation chance level,
(b) the re-identification rate at a 1:N false-link rate of 1 % and 0.1 % beside held-out real images as the
control, and the normalised risk, (c) the linked pairs. Figure names: see `attacks.reid.evaluate`.

Writes into its folder: ``reid.csv`` (synthetic,nearest_train,nearest_patient,score,is_linked), ``reid.json``
(every figure an Estimate), ``gallery.png`` (the best-scoring pairs side by side) and ``scores.png`` (best-match
scores, synthetic vs held-out, with the thresholds).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from attacks.reid.attacker import AttackerParams, ReidAttacker, cached_attacker, load_attacker
from attacks.reid.evaluate import FPRS, LINK_FPR, EvaluationParams, ReidEvaluation, check_disjoint_patients, \
    evaluate_embeddings
from audit.artifacts import ArtifactCache
from audit.errors import AuditInputError
from audit.jsonio import write_json_atomic
from audit.parallel import executor_of
from audit.registry import Params, Runtime
from audit.stages import Artefact, StageContext, StageInputs, StageOutput

CSV_COLUMNS = ("synthetic", "nearest_train", "nearest_patient", "score", "is_linked")
FILES = {"csv": "reid.csv", "json": "reid.json", "gallery": "gallery.png", "histogram": "scores.png"}


class ReidStageParams(Params):
    attacker: AttackerParams = Field(default_factory=AttackerParams)
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    checkpoint: str | None = None  # a saved attacker (`audit attack reid train`) instead of the cached one


def display_names(dataset, root: str | Path | None = None) -> list[str]:
    """File names relative to `root` (default: the folder all the set's files share)."""
    paths = [Path(r.path) for r in dataset.records]
    if root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
    out = []
    for path in paths:
        try:
            out.append(path.relative_to(root).as_posix())
        except ValueError:
            out.append(path.as_posix())
    return out


def source_patients(synthetic, train) -> tuple[list[str | None], dict[str, int]]:
    """Per synthetic image the patient of its source_id among the training records (None if it has none, or
    names a record that is not in the training set), and the counts of both cases."""
    patient_of = {r.id: r.patient_id for r in train.records}
    out: list[str | None] = []
    counts = {"without_source_id": 0, "source_not_in_training_set": 0}
    for record in synthetic.records:
        if not record.source_id:
            counts["without_source_id"] += 1
            out.append(None)
        elif record.source_id not in patient_of:
            counts["source_not_in_training_set"] += 1
            out.append(None)
        else:
            out.append(patient_of[record.source_id])
    return out, counts


def write_reid_csv(path: Path, evaluation: ReidEvaluation, synthetic_names: Sequence[str],
                   train_names: Sequence[str], train_patients: Sequence[str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            best = evaluation.synthetic_best
            for i, name in enumerate(synthetic_names):
                t = int(best.index[i])
                writer.writerow([name, train_names[t], train_patients[t], f"{best.score[i]:.6f}",
                                 "true" if evaluation.linked[i] else "false"])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_figures(out_dir: Path, evaluation: ReidEvaluation, train, synthetic, synthetic_names: Sequence[str],
                  train_names: Sequence[str], gallery_pairs: int) -> int:
    """gallery.png (the best-scoring synthetic images beside their nearest training image) and scores.png;
    returns how many pairs the gallery shows."""
    from attacks.reid.plots import pair_captions, plot_gallery, plot_score_histogram

    best = evaluation.synthetic_best
    order = np.argsort(-best.score, kind="stable")[:gallery_pairs]
    synthetic_images = [synthetic.load(synthetic.records[i])[0] for i in order]
    train_images = [train.load(train.records[int(best.index[i])])[0] for i in order]
    captions = [pair_captions(synthetic_names[i], train_names[int(best.index[i])], float(best.score[i]),
                              bool(evaluation.linked[i])) for i in order]
    plot_gallery(out_dir / FILES["gallery"], synthetic_images, train_images, captions)
    thresholds = {f"1:N {fpr:.1%}": evaluation.linkage[fpr].threshold for fpr in FPRS}
    plot_score_histogram(out_dir / FILES["histogram"], best.score, evaluation.holdout_best.score, thresholds)
    return len(order)


def run_reid(train, holdout, synthetic, params: ReidStageParams, runtime: Runtime, cache: ArtifactCache,
             out_dir: str | Path, names: dict[str, list[str]] | None = None,
             attacker: ReidAttacker | None = None) -> StageOutput:
    """The whole stage on three `ImageDataset`s; `names` = display names of the train / synthetic files."""
    out_dir = Path(out_dir)
    train_patients = [r.patient_id for r in train.records]
    holdout_patients = [r.patient_id for r in holdout.records]
    check_disjoint_patients(train_patients, holdout_patients)
    if len(set(holdout_patients)) < 2:
        raise AuditInputError(None, "the held-out set must hold images of at least 2 patients (calibration and "
                                    "control are measured across patients)")
    if len(synthetic) == 0:
        raise AuditInputError(None, "no synthetic images to link")
    if synthetic.shape != train.shape or holdout.shape != train.shape:
        raise AuditInputError(None, f"image shapes differ: train {train.shape}, held-out {holdout.shape}, "
                                    f"synthetic {synthetic.shape}")
    names = names or {"train": display_names(train), "synthetic": display_names(synthetic)}

    if attacker is None:
        attacker = (load_attacker(params.checkpoint, runtime) if params.checkpoint
                    else cached_attacker(train, params.attacker, runtime, cache))
    if attacker.ndim != train.ndim:
        raise AuditInputError(params.checkpoint, f"the attacker embeds {attacker.ndim}D images, the data is "
                                                 f"{train.ndim}D")
    progress = runtime.progress
    executor = executor_of(runtime)  # in process, or Ray actors loading the attacker from its folder
    train_emb = attacker.embed_dataset(train, "embedding training images" if progress else None, executor)
    holdout_emb = attacker.embed_dataset(holdout, "embedding held-out images" if progress else None, executor)
    synthetic_emb = attacker.embed_dataset(synthetic, "embedding synthetic images" if progress else None, executor)
    synthetic_patients, source_counts = source_patients(synthetic, train)

    evaluation = evaluate_embeddings(train_emb, train_patients, holdout_emb, holdout_patients, synthetic_emb,
                                     synthetic_patients, params.evaluation, seed=runtime.seed)
    evaluation.details["synthetic_map"].update(source_counts)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_reid_csv(out_dir / FILES["csv"], evaluation, names["synthetic"], names["train"], train_patients)
    shown = write_figures(out_dir, evaluation, train, synthetic, names["synthetic"], names["train"],
                          params.evaluation.gallery_pairs)
    details: dict[str, Any] = {**evaluation.details, "attacker": attacker.describe(), "link_fpr": LINK_FPR,
                               "files": FILES}
    write_json_atomic(out_dir / FILES["json"], {"figures": {k: v.to_dict() for k, v in evaluation.figures.items()},
                                                "details": details})
    linked = evaluation.linked
    artefacts = {
        "csv": Artefact(FILES["csv"], "table", "per synthetic image: best training match, its patient, cosine, "
                                               "linked at the 1 % 1:N false-link threshold"),
        "json": Artefact(FILES["json"], "data", "all figures with their intervals and details"),
        "gallery": Artefact(FILES["gallery"], "gallery", f"the {shown} synthetic images most similar to a training "
                                                         f"patient, beside that patient's image ({int(linked.sum())} "
                                                         f"linked in all)"),
        "histogram": Artefact(FILES["histogram"], "plot", "best-match cosine to the training set: synthetic vs "
                                                          "held-out real images, with the 1:N thresholds"),
    }
    return StageOutput(figures=evaluation.figures, details=details, artefacts=artefacts,
                       flagged_ids=[synthetic.records[i].id for i in np.flatnonzero(linked)])


class ReidStage:
    """Siamese re-identification of patients (see the module docstring)."""

    name = "reid"
    Params = ReidStageParams

    def __init__(self, params: ReidStageParams, runtime: Runtime | None = None):
        self.params = params
        self.runtime = runtime or Runtime()

    def requirements(self, inputs: StageInputs) -> str | None:
        if inputs.synthetic is None or len(inputs.synthetic) == 0:
            return "no synthetic images to link"
        return None

    def run(self, inputs: StageInputs, context: StageContext) -> StageOutput:
        return run_reid(inputs.train, inputs.holdout, inputs.synthetic, self.params, context.runtime, context.cache,
                        context.out_dir)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump(mode="json")}
