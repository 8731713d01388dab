"""The utility stage of `audit run`: TSTR vs TRTR (and optionally mixed) on the run's real test set.

Uses `inputs.train` (the TRTR training set), `inputs.holdout` (the real test set) and `inputs.synthetic` (the
TSTR training set, labelled by its manifest's conditions). The TRTR arm is cached through `context.cache`
(keyed by the data's fingerprint + target + recipe + seed), so auditing a second model on the same data trains
only the synthetic arms. Figures: `tstr_auc`, `trtr_auc`, `gap` (TRTR − TSTR; lower is better), `mixed_auc`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from audit.registry import Params, Runtime
from audit.stages import Artefact, StageContext, StageInputs, StageOutput
from audit.utility.training import Recipe


class UtilityStage:
    name = "utility"

    class Params(Params):
        target: str = "auto"  # auto: malignancy when the images carry BI-RADS, lesion when a manifest has it
        recipe: Recipe = Field(default_factory=Recipe)
        mixed: bool = False  # also train on real + synthetic
        n_boot: int = Field(1000, ge=10)
        confidence: float = Field(0.95, gt=0, lt=1)

    def __init__(self, params: Params, runtime: Runtime | None = None):
        from audit.utility.targets import make_target

        self.params = params
        self.runtime = runtime or Runtime()
        # an unknown target name is bad input, reported before anything runs
        self._fixed_target = None if params.target == "auto" else make_target(params.target)

    # ----------------------------------------------------------------------------------------------------
    def _target(self, inputs: StageInputs):
        from audit.utility.targets import default_target_name, make_target

        if self._fixed_target is not None:
            return self._fixed_target
        name = default_target_name(inputs.train.records)
        return make_target(name) if name else None

    def _sets(self, inputs: StageInputs, target):
        from audit.utility.data import labelled_set

        return {"train": labelled_set(inputs.train, target, "trtr"),
                "test": labelled_set(inputs.holdout, target, "test"),
                "synthetic": labelled_set(inputs.synthetic, target, "tstr")}

    def requirements(self, inputs: StageInputs) -> str | None:
        from audit.metrics.utility import check_utility_sets

        if inputs.synthetic is None:
            return "no synthetic images to train on"
        target = self._target(inputs)
        if target is None:
            return "no default utility target for these labels (no BI-RADS, no 'lesion' column): set utility.target"
        return check_utility_sets(target, self._sets(inputs, target))

    def run(self, inputs: StageInputs, context: StageContext) -> StageOutput:
        from audit.metrics.utility import evaluate_utility
        from audit.utility.classifiers import make_classifier
        from audit.utility.plots import plot_roc

        target = self._target(inputs)
        sets = self._sets(inputs, target)
        shape = tuple(inputs.train.shape)
        classifier = make_classifier(self.params.recipe.classifier, self.params.recipe.classifier_options,
                                     len(shape))
        run = evaluate_utility(target, sets["train"], sets["test"], sets["synthetic"], self.params.recipe,
                               classifier, shape, context.runtime, cache=context.cache, mixed=self.params.mixed,
                               n_boot=self.params.n_boot, confidence=self.params.confidence)
        context.out_dir.mkdir(parents=True, exist_ok=True)
        plot_roc(context.out_dir / "roc.png", run.test.y, run.probabilities, target.classes, run.figures,
                 f"utility: {target.name}")
        artefacts = {"roc": Artefact("roc.png", "plot", f"ROC of the {target.name} classifier on the real test "
                                                        "images, trained on real (TRTR) and on synthetic (TSTR)")}
        return StageOutput(figures=run.figures, details=run.details(), artefacts=artefacts)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json")}
