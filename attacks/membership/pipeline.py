"""The membership audit of one model: members vs label-matched non-members, every attack scored and evaluated
alike, outputs written by one function for the CLI and the `audit run` stage.

    result = run_membership(generator, members, nonmembers, ["loss", "dcr"], {}, runtime, synthetic=...)
    write_outputs(result, out_dir)   # mia_scores.csv, mia.json, roc_loglog.png

An attack whose access the model does not give (white-box on a folder of images, `dcr_embed` without the re-id
embedding) is *skipped with its reason* when it came from the defaults, and is an input error when the user
asked for it by name.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from attacks.membership.blackbox import BlackBoxAttack, Embedder, NearestSynthetic
from attacks.membership.evaluate import AttackEvaluation, best_attack, evaluate_attack
from attacks.membership.members import (Matching, check_disjoint, default_match_fields, image_digest, match_pairs)
from attacks.membership.registry import ATTACKS
from attacks.membership.whitebox import WhiteBoxAttack, score_whitebox
from audit.errors import AuditInputError
from audit.metrics.statistics import Estimate, rate_estimate
from audit.registry import Runtime

DEFAULT_MIN_PAIRS = 16
SCORES_FILE, RESULT_FILE, ROC_FILE = "mia_scores.csv", "mia.json", "roc_loglog.png"


class ArraySet:
    """Images held in memory with the `iter_images` of an ImageDataset (generated samples)."""

    def __init__(self, images: np.ndarray):
        self.images = np.asarray(images, np.float32)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def iter_images(self, batch_size: int = 32, progress: str | None = None):
        for start in range(0, len(self.images), batch_size):
            yield self.images[start:start + batch_size], []


class LazySamples:
    """The model's samples, drawn on first use: input errors found later (too few members, an overlap) never
    wait for sampling."""

    def __init__(self, draw: Callable[[], np.ndarray]):
        self._draw = draw
        self._set: ArraySet | None = None

    def _samples(self) -> ArraySet:
        if self._set is None:
            self._set = ArraySet(self._draw())
        return self._set

    def __len__(self) -> int:
        return len(self._samples())

    def iter_images(self, batch_size: int = 32, progress: str | None = None):
        return self._samples().iter_images(batch_size, progress)


@dataclass
class AttackTarget:
    """What the attacks may use, and why something is missing."""

    denoiser: Any | None = None
    no_denoiser_reason: str = ""
    synthetic: Any | None = None  # ImageDataset or ArraySet of the model's samples
    no_synthetic_reason: str = ""
    embedder: Embedder | None = None
    no_embedder_reason: str = ""
    conditional: bool = False  # the model takes the candidates' labels as conditions
    denoiser_source: Any | None = None  # how executor workers load the denoiser (whitebox.DenoiserSource)


def whitebox_access(generator) -> tuple[Any | None, str]:
    if generator is None:
        return None, "no model given"
    denoiser = generator.denoiser() if hasattr(generator, "denoiser") else None
    if denoiser is None:
        kind = getattr(generator, "kind", type(generator).__name__)
        return None, f"the model is a {kind} (its images only): white-box attacks need the noise predictor"
    return denoiser, ""


def is_conditional(generator) -> bool:
    vocabulary = getattr(generator, "vocabulary", None)
    return bool(vocabulary is not None and vocabulary.fields)


@dataclass
class MembershipResult:
    matching: Matching
    attacks: dict[str, dict]  # name → describe() (+ conditioning used)
    scores: dict[str, np.ndarray]  # name → scores of members then non-members (pair order)
    evaluations: dict[str, AttackEvaluation]
    skipped: dict[str, str]
    nearest: dict[str, NearestSynthetic] = field(default_factory=dict)  # black-box attacks
    seconds: dict[str, float] = field(default_factory=dict)
    disjoint: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # the `file` column: members then non-members
    order: list[str] = field(default_factory=list)  # attacks in the order asked

    @property
    def is_member(self) -> np.ndarray:
        n = self.matching.n_pairs
        return np.concatenate([np.ones(n, bool), np.zeros(n, bool)])

    def best(self) -> str | None:
        return best_attack(self.evaluations)

    def dcr_share(self, name: str) -> Estimate:
        near = self.nearest[name]
        return rate_estimate(near.closer_to_member, near.n_synthetic, higher_is_better=False)

    def figures(self) -> dict[str, Estimate]:
        """The stage's figures: <attack>/<metric>, best/auc, best/tpr_at_fpr_1pct, <black-box>/share."""
        out: dict[str, Estimate] = {}
        for name, ev in self.evaluations.items():
            for metric, estimate in ev.figures.items():
                out[f"{name}/{metric}"] = estimate
        best = self.best()
        if best is not None:
            out["best/auc"] = self.evaluations[best].figures["auc"]
            out["best/tpr_at_fpr_1pct"] = self.evaluations[best].figures["tpr_at_fpr_1pct"]
        for name in self.nearest:
            out[f"{name}/share"] = self.dcr_share(name)
        return out

    def to_json(self) -> dict:
        best = self.best()
        attacks = {}
        for name in self.order:
            entry = dict(self.attacks.get(name, {}))
            if name in self.skipped:
                entry["skipped"] = self.skipped[name]
            if name in self.evaluations:
                entry.update(self.evaluations[name].to_dict())
                entry["seconds"] = round(self.seconds.get(name, float("nan")), 3)
            if name in self.nearest:
                near = self.nearest[name]
                share = self.dcr_share(name)
                entry["dcr"] = {"share": share.to_dict(), "n_synthetic": near.n_synthetic,
                                "closer_to_member": near.closer_to_member, "expected_without_copying": 0.5,
                                "sdmetrics_protection": min(2 * (1 - share.value), 1.0)}
            attacks[name] = entry
        return {"model": self.model, "members": self.matching.n_pairs, "nonmembers": self.matching.n_pairs,
                "matching": self.matching.summary(), "overlap_checks": self.disjoint,
                "attacks": attacks, "skipped": dict(self.skipped),
                "best": {"attack": best, "note": "the attack with the highest AUC among those run; picking the best "
                                                  "of several after seeing their results is optimistic"},
                "n_synthetic": max((n.n_synthetic for n in self.nearest.values()), default=0),
                "seconds_for_synthetic_images": self.seconds.get("synthetic_images"),
                "figures": {k: v.to_dict() for k, v in self.figures().items()}}


def build_attacks(names: Sequence[str], options: Mapping[str, Mapping] | None, runtime: Runtime) -> list:
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise AuditInputError(None, f"--option: attack '{unknown[0]}' is not among the attacks run "
                                    f"({', '.join(names)})")
    return [ATTACKS.create(n, options.get(n), runtime) for n in names]


def _subset(dataset, records):
    """The dataset restricted to `records`, in that order (same decoder and cache)."""
    return dataclasses.replace(dataset, records=list(records))


def _digests(dataset) -> list[str]:
    return [image_digest(image) for images, _ in dataset.iter_images(64) for image in images]


def run_membership(generator, members, nonmembers, attack_names: Sequence[str], options: Mapping | None,
                   runtime: Runtime, *, target: AttackTarget | None = None, explicit: bool = False,
                   match_fields: Sequence[str] | None = None, min_pairs: int = DEFAULT_MIN_PAIRS,
                   max_pairs: int | None = None, n_boot: int = 1000, by_id: bool = True, name_of: Callable | None = None) -> MembershipResult:
    """Score members against matched non-members with every attack. `members`/`nonmembers` are ImageDatasets
    at the generator's image shape; `target` holds the denoiser / synthetic set / embedder (built from the
    generator when None)."""
    attacks = build_attacks(attack_names, options, runtime)
    if target is None:
        denoiser, reason = whitebox_access(generator)
        target = AttackTarget(denoiser, reason, conditional=is_conditional(generator),
                              no_synthetic_reason="no synthetic images given", no_embedder_reason="no embedder given")
    skipped: dict[str, str] = {}
    runnable = []
    for attack in attacks:
        reason = attack.requirement(target)
        if reason is None:
            runnable.append(attack)
        elif explicit:
            raise AuditInputError("--attacks", f"attack '{attack.name}' cannot run on this model: {reason}")
        else:
            skipped[attack.name] = reason

    disjoint = check_disjoint(members.records, nonmembers.records, by_id=by_id)
    fields = tuple(match_fields) if match_fields is not None else \
        default_match_fields([*members.records, *nonmembers.records], generator)
    matching = match_pairs(members.records, nonmembers.records, fields, seed=runtime.seed)
    if matching.n_pairs < min_pairs:
        raise AuditInputError("--members/--nonmembers",
                              f"too few members: {matching.n_pairs} member/non-member pairs (members offered "
                              f"{len(members.records)}, non-members {len(nonmembers.records)}); at least "
                              f"{min_pairs} needed")
    if max_pairs is not None and matching.n_pairs > max_pairs:
        matching = matching.sample(max_pairs, runtime.seed)
    member_set, nonmember_set = _subset(members, matching.members), _subset(nonmembers, matching.nonmembers)
    check_disjoint(matching.members, matching.nonmembers, _digests(member_set), _digests(nonmember_set),
                   by_id=by_id)

    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    described = {a.name: a.describe() for a in attacks}
    whitebox = [a for a in runnable if isinstance(a, WhiteBoxAttack)]
    if whitebox:
        parts = []
        for label, dataset in (("members", member_set), ("non-members", nonmember_set)):
            part, spent = score_whitebox(whitebox, target.denoiser, dataset, runtime, conditional=target.conditional,
                                         progress=f"white-box attacks: {label}" if runtime.progress else None,
                                         denoiser_source=target.denoiser_source)
            parts.append(part)
            for name, s in spent.items():
                seconds[name] = seconds.get(name, 0.0) + s
        for a in whitebox:
            scores[a.name] = np.concatenate([parts[0][a.name], parts[1][a.name]])
            described[a.name]["conditioning"] = (a.params.conditioning if target.conditional
                                                 else "none (unconditional model)")
            described[a.name]["space"] = target.denoiser.space
    nearest: dict[str, NearestSynthetic] = {}
    blackbox = [a for a in runnable if isinstance(a, BlackBoxAttack)]
    if blackbox:
        started = time.perf_counter()
        len(target.synthetic)  # drawn here when they are the model's samples: timed apart from the attacks
        seconds["synthetic_images"] = time.perf_counter() - started
        candidates = np.concatenate([member_set.stack(), nonmember_set.stack()])
        is_member = np.arange(len(candidates)) < matching.n_pairs
        for a in blackbox:
            started = time.perf_counter()
            near = a.run(candidates, is_member, target,
                         progress=f"{a.name}: synthetic images" if runtime.progress else None)
            seconds[a.name] = time.perf_counter() - started
            nearest[a.name], scores[a.name] = near, near.candidate_best.astype(np.float64)
            described[a.name]["n_synthetic"] = near.n_synthetic
    labels = np.arange(2 * matching.n_pairs) < matching.n_pairs
    patients = [r.patient_id for r in (*matching.members, *matching.nonmembers)]
    evaluations = {a.name: evaluate_attack(labels, scores[a.name], n_boot=n_boot, seed=runtime.seed, groups=patients)
                   for a in runnable}
    name_of = name_of or (lambda record: record.id)
    names = [name_of(r) for r in matching.members] + [name_of(r) for r in matching.nonmembers]
    model = _describe_model(generator)
    return MembershipResult(matching, described, scores, evaluations, skipped, nearest, seconds, disjoint, model,
                            names, list(attack_names))


def _describe_model(generator) -> dict:
    if generator is None:
        return {}
    info = generator.describe() if hasattr(generator, "describe") else {}
    keep = ("kind", "shape", "checkpoint_hash", "pipeline", "scheduler", "folder", "latent_shape")
    return {k: info[k] for k in keep if k in info}


# --- outputs -------------------------------------------------------------------------------------------------

def _fmt(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.8g}"


def write_scores_csv(path: Path, result: MembershipResult) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "is_member", *result.order])
        for i, (name, member) in enumerate(zip(result.names, result.is_member)):
            writer.writerow([name, "true" if member else "false",
                             *(_fmt(result.scores[a][i]) if a in result.scores else "" for a in result.order)])
    os.replace(tmp, path)


def write_outputs(result: MembershipResult, out_dir: str | Path, extra: dict | None = None) -> dict:
    """mia_scores.csv, mia.json and the log-log ROC (when an attack ran) in `out_dir`; returns the JSON."""
    from attacks.membership.plots import plot_roc_loglog
    from audit.jsonio import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_scores_csv(out / SCORES_FILE, result)
    summary = {**result.to_json(), **(extra or {})}
    if result.evaluations:
        plot_roc_loglog(out / ROC_FILE, result.evaluations,
                        f"membership inference: {result.matching.n_pairs} members vs {result.matching.n_pairs} "
                        "non-members (dashed: control)")
        summary["roc_plot"] = ROC_FILE
    write_json_atomic(out / RESULT_FILE, summary)
    return summary
