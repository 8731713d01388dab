"""Downstream utility: train on synthetic, test on real (TSTR) against train on real, test on real (TRTR).

Every arm trains the same classifier with the same recipe and budget (`audit.utility.training.Recipe`) and the
same seed, and is tested on the same held-out real images:

- ``trtr``: the real training images (the baseline: what the real data teach);
- ``tstr``: the synthetic images only, labelled with the conditions they were made from;
- ``mixed`` (optional): real training + synthetic images together.

Reported: ROC-AUC of each arm (binary targets: the positive class's probability; multi-class targets: the
one-vs-rest macro average, as scikit-learn's ``roc_auc_score(multi_class="ovr", average="macro")``) with a
percentile bootstrap interval over *test patients* (a cluster bootstrap: a patient's images go in or out
together), and the gap TRTR − TSTR with a paired interval (both AUCs computed on the same patient resamples).
The TRTR arm depends only on the real data and the recipe, so its test-set probabilities are cached
(`ArtifactCache`, kind ``utility-trtr``) and a second model audited on the same data does not retrain it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.artifacts import ArtifactCache, records_fingerprint
from audit.errors import AuditInputError
from audit.jsonio import write_json_atomic
from audit.metrics.statistics import Estimate, cluster_resamples, percentile_interval, roc_auc
from audit.registry import Runtime
from audit.utility.data import LabelledSet, concatenate
from audit.utility.training import Recipe, predict_probabilities, train_classifier

ARMS = ("trtr", "tstr", "mixed")
CACHE_KIND = "utility-trtr"
CACHE_VERSION = 1  # bump when training or prediction changes what a cached TRTR arm would hold


# ----------------------------------------------------------------------------------------------- the maths


def macro_ovr_auc(labels: np.ndarray, probabilities: np.ndarray, classes: list[int] | None = None) -> float:
    """Mean over `classes` of the AUC of "class c vs the rest" scored by column c.

    `classes` default: those present in `labels`. When a listed class is absent from (or is all of) the labels,
    the figure is undefined (nan), so that bootstrap resamples never average over a different set of classes."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    classes = sorted(set(labels.tolist())) if classes is None else classes
    aucs = [roc_auc(labels == c, probabilities[:, c]) for c in classes]
    return float(np.mean(aucs)) if aucs and all(np.isfinite(aucs)) else float("nan")


def target_auc(labels: np.ndarray, probabilities: np.ndarray, classes: list[int] | None = None) -> float:
    """ROC-AUC of class probabilities (N, K): binary (K = 2) on the positive column, else one-vs-rest macro."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return roc_auc(np.asarray(labels) == 1, probabilities[:, 1])
    return macro_ovr_auc(labels, probabilities, classes)


def utility_figures(labels: np.ndarray, patients: np.ndarray, probabilities: dict[str, np.ndarray],
                    n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """`<arm>_auc` for every arm given, and `gap` (TRTR − TSTR) when both are, with cluster-bootstrap intervals
    over patients. Every arm is evaluated on the same resamples, so the gap's interval is paired."""
    labels = np.asarray(labels)
    n_classes = next(iter(probabilities.values())).shape[1]
    binary = n_classes == 2
    classes = sorted(set(labels.tolist()))
    resamples = cluster_resamples(patients, n_boot, seed, strata=labels if binary else None)
    n_patients = len(set(np.asarray(patients).tolist()))
    method = (f"cluster bootstrap {confidence:.0%} ({n_boot} resamples of {n_patients} test patients"
              f"{', stratified by any positive image' if binary else ''})")
    values, boot = {}, {}
    for arm, probs in probabilities.items():
        values[arm] = target_auc(labels, probs, classes)
        boot[arm] = np.array([target_auc(labels[idx], probs[idx], classes) for idx in resamples])
    figures = {}
    for arm in probabilities:
        lo, hi = percentile_interval(boot[arm], confidence)
        figures[f"{arm}_auc"] = Estimate(values[arm], lo, hi, len(labels), True, method)
    if "trtr" in probabilities and "tstr" in probabilities:
        lo, hi = percentile_interval(boot["trtr"] - boot["tstr"], confidence)
        figures["gap"] = Estimate(values["trtr"] - values["tstr"], lo, hi, len(labels), False,
                                  method.replace("cluster bootstrap", "paired cluster bootstrap"))
    return figures


# ----------------------------------------------------------------------------------------------- the checks


def check_utility_sets(target, sets: dict[str, LabelledSet]) -> str | None:
    """Why utility cannot be measured on these sets (None: it can). Keys: train, test, synthetic."""
    what = {"train": "the real training images", "test": "the real test images",
            "synthetic": "the synthetic images"}
    for key in ("synthetic", "train", "test"):
        data = sets.get(key)
        if data is None:
            continue
        if len(data) == 0:
            hint = (" (a folder of images without a manifest of the conditions they were made from)"
                    if key == "synthetic" else "")
            return f"{what[key]} carry no '{target.reads}' labels for target '{target.name}'{hint}"
        present = data.present_classes()
        if len(present) < 2:
            only = target.classes[present[0]]
            return (f"{what[key]} hold only class '{only}' of target '{target.name}' ({len(data)} images): "
                    f"an AUC needs at least two classes")
    return None


def require_utility_sets(target, sets: dict[str, LabelledSet], where: str | Path | None = None) -> None:
    reason = check_utility_sets(target, sets)
    if reason is not None:
        raise AuditInputError(where, reason)


# ----------------------------------------------------------------------------------------------- the runs


@dataclass
class UtilityRun:
    target: Any
    classifier: Any
    recipe: Recipe
    test: LabelledSet
    training_sets: dict[str, LabelledSet]
    probabilities: dict[str, np.ndarray]
    training_logs: dict[str, dict]
    figures: dict[str, Estimate]
    trtr_from_cache: bool = False
    notes: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        names = list(self.target.classes)
        return {"target": self.target.describe(), "classifier": self.classifier.describe(),
                "recipe": self.recipe.model_dump(mode="json"),
                "sets": {"test": self.test.summary(names),
                         **{arm: s.summary(names) for arm, s in self.training_sets.items()}},
                "training": self.training_logs, "trtr_from_cache": self.trtr_from_cache, "notes": self.notes}

    def to_json(self) -> dict[str, Any]:
        """utility.json: the Estimates at the top level (tstr_auc, trtr_auc, gap, mixed_auc), then the details."""
        return {**{k: v.to_dict() for k, v in self.figures.items()}, **self.details()}


def set_fingerprint(data: LabelledSet) -> str:
    """What a labelled set is: its records (ids, labels, file identities), classes and preprocessing."""
    preprocess = sorted({str(d.preprocess.model_dump(mode="json")) for d, _ in data.items})
    return records_fingerprint([r for _, r in data.items], extra={"y": data.y.tolist(), "preprocess": preprocess})


def train_and_predict(data: LabelledSet, test: LabelledSet, recipe: Recipe, classifier, shape, runtime: Runtime,
                      arm: str) -> tuple[np.ndarray, dict]:
    progress = arm if runtime.progress else None
    model, log = train_classifier(data, recipe, classifier, shape, seed=runtime.seed, device=runtime.device,
                                  progress=f"train {progress}" if progress else None)
    probs = predict_probabilities(model, test, runtime.batch_size, runtime.device,
                                  progress=f"test {progress}" if progress else None)
    return probs, log


def cached_trtr(train: LabelledSet, test: LabelledSet, recipe: Recipe, classifier, shape, runtime: Runtime,
                cache: ArtifactCache, target) -> tuple[np.ndarray, dict, bool]:
    """TRTR probabilities on the test set from the cache, or trained and stored. (probabilities, log, was hit)"""
    key = {"version": CACHE_VERSION, "train": set_fingerprint(train), "test": set_fingerprint(test),
           "target": target.describe(), "recipe": recipe.model_dump(mode="json"),
           "classifier": classifier.describe(), "seed": runtime.seed}
    builds_before = cache.builds

    def build(folder: Path) -> None:
        probs, log = train_and_predict(train, test, recipe, classifier, shape, runtime, "trtr")
        np.savez(folder / "probabilities.npz", probabilities=probs, ids=np.array(test.ids, dtype=str))
        write_json_atomic(folder / "training.json", log)

    folder = cache.get_or_build(CACHE_KIND, key, build)
    stored = np.load(folder / "probabilities.npz")
    if stored["ids"].tolist() != test.ids:  # a hash collision or a hand-edited cache: never trust it silently
        raise AuditInputError(folder, "cached TRTR predictions are for other test images; delete this folder")
    import json

    log = json.loads((folder / "training.json").read_text())
    return stored["probabilities"], log, cache.builds == builds_before


def evaluate_utility(target, train: LabelledSet, test: LabelledSet, synthetic: LabelledSet, recipe: Recipe,
                     classifier, shape: tuple[int, ...], runtime: Runtime, cache: ArtifactCache | None = None,
                     mixed: bool = False, n_boot: int = 1000, confidence: float = 0.95) -> UtilityRun:
    """Train every arm, predict the test set, and compute the figures. Sets must pass `check_utility_sets`."""
    require_utility_sets(target, {"train": train, "test": test, "synthetic": synthetic})
    training_sets = {"trtr": train, "tstr": synthetic}
    if mixed:
        training_sets["mixed"] = concatenate("mixed", train, synthetic)
    probabilities, logs = {}, {}
    hit = False
    if cache is not None:
        probabilities["trtr"], logs["trtr"], hit = cached_trtr(train, test, recipe, classifier, shape, runtime,
                                                              cache, target)
    for arm, data in training_sets.items():
        if arm not in probabilities:
            probabilities[arm], logs[arm] = train_and_predict(data, test, recipe, classifier, shape, runtime, arm)
    figures = utility_figures(test.y, test.patients, probabilities, n_boot, confidence, runtime.seed)
    notes = []
    missing = [target.classes[c] for c in range(len(target.classes)) if c not in test.present_classes()]
    if missing and len(target.classes) > 2:
        notes.append(f"classes absent from the test set, left out of the macro AUC: {', '.join(missing)}")
    return UtilityRun(target, classifier, recipe, test, training_sets, probabilities, logs, figures, hit, notes)
