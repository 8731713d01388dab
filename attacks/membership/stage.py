"""The membership stage of `audit run`: can an attacker tell the generator's training images from new ones?

Members are `inputs.members` (the generator's training images; the training split when the pipeline has no
list, e.g. for a folder model), non-members `inputs.holdout` (label-matched, equal in number), synthetic images
`inputs.synthetic` (for the black-box attacks). Figures: per attack `<attack>/auc`, `/tpr_at_fpr_1pct`,
`/tpr_at_fpr_0.1pct`, `/balanced_accuracy`, `/control_auc`; `best/auc`, `best/tpr_at_fpr_1pct`; `dcr/share`
(and `dcr_embed/share`). Artefacts: mia_scores.csv, mia.json, roc_loglog.png.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from attacks.membership.pipeline import (DEFAULT_MIN_PAIRS, RESULT_FILE, ROC_FILE, SCORES_FILE, AttackTarget,
                                         is_conditional, run_membership, whitebox_access, write_outputs)
from attacks.membership.registry import ATTACKS, DEFAULT_ATTACKS
from audit.registry import Params, Runtime
from audit.stages import Artefact, StageContext, StageInputs, StageOutput


class MembershipStage:
    name = "membership"

    class Params(Params):
        attacks: tuple[str, ...] = DEFAULT_ATTACKS
        options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # attack name → its parameters
        match_fields: tuple[str, ...] | None = None  # None: view, density, BI-RADS (mammograms) / the model's labels
        min_pairs: int = DEFAULT_MIN_PAIRS
        max_pairs: int | None = 256  # CPU-sized: a random subset of the matched pairs beyond this
        n_boot: int = 1000
        reid: dict[str, Any] = Field(default_factory=dict)  # AttackerParams of the dcr_embed embedding

    def __init__(self, params: "MembershipStage.Params", runtime: Runtime):
        ATTACKS.parse_names(params.attacks, "membership.attacks")
        for name in params.attacks:
            ATTACKS.params(name, params.options.get(name))  # validated before any work
        self.params = params
        self.runtime = runtime

    def requirements(self, inputs: StageInputs) -> str | None:
        if inputs.holdout is None or len(inputs.holdout) == 0:
            return "no held-out real images to serve as non-members"
        members = inputs.members if inputs.members is not None else inputs.train
        if members is None or len(members) == 0:
            return "no member images (the generator's training images)"
        has_whitebox = inputs.generator is not None and whitebox_access(inputs.generator)[0] is not None
        if not has_whitebox and inputs.synthetic is None:
            return "neither white-box access to the model nor synthetic images: no attack can run"
        return None

    def _target(self, inputs: StageInputs, members, context: StageContext) -> AttackTarget:
        denoiser, no_denoiser = whitebox_access(inputs.generator)
        model_shape = tuple(getattr(inputs.generator, "shape", ()) or ())
        if denoiser is not None and model_shape != tuple(members.shape):
            denoiser, no_denoiser = None, (f"the run's images are {tuple(members.shape)}, the model makes "
                                           f"{model_shape}: white-box scores would be on resampled images")
        embedder, no_embedder = None, "not asked for"
        if "dcr_embed" in self.params.attacks and inputs.synthetic is not None:
            from attacks.membership.embedding import reid_embedder

            embedder, no_embedder = reid_embedder(inputs.train, context.runtime, context.cache, self.params.reid)
        return AttackTarget(denoiser, no_denoiser, inputs.synthetic,
                            "" if inputs.synthetic is not None else "the run has no synthetic images",
                            embedder, no_embedder, is_conditional(inputs.generator))

    def run(self, inputs: StageInputs, context: StageContext) -> StageOutput:
        members = inputs.members if inputs.members is not None else inputs.train
        runtime = context.runtime.with_(progress=context.runtime.progress)
        result = run_membership(inputs.generator, members, inputs.holdout, list(self.params.attacks),
                                self.params.options, runtime, target=self._target(inputs, members, context),
                                explicit=False, match_fields=self.params.match_fields,
                                min_pairs=self.params.min_pairs, max_pairs=self.params.max_pairs,
                                n_boot=self.params.n_boot,
                                # record ids identify an image only within one dataset (folders: file names)
                                by_id=getattr(members, "name", None) == getattr(inputs.holdout, "name", None))
        source = ("the generator's training images" if inputs.members is not None
                  else "the training split (the generator does not list its training images)")
        summary = write_outputs(result, context.out_dir, {"sources": {"members": source,
                                                                      "nonmembers": "the held-out split"}})
        details = {k: v for k, v in summary.items() if k != "figures"}
        artefacts = {"scores": Artefact(SCORES_FILE, "table", "per-sample scores of every attack"),
                     "result": Artefact(RESULT_FILE, "data", "every figure, the matching and the parameters")}
        if result.evaluations:
            artefacts["roc"] = Artefact(ROC_FILE, "plot", "log-log ROC of every attack (dashed: its control run)")
        return StageOutput(figures=result.figures(), details=details, artefacts=artefacts,
                           skipped=dict(result.skipped))

    def describe(self) -> dict[str, Any]:
        return {"params": self.params.model_dump(mode="json"),
                "attacks": {n: ATTACKS.params(n, self.params.options.get(n)).model_dump(mode="json")
                            for n in self.params.attacks}}
