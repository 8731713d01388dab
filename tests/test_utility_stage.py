"""UtilityStage (audit run's utility stage): skip reasons, figures, and the TRTR arm cached across models."""

from __future__ import annotations

import numpy as np
import pytest

from audit.artifacts import ArtifactCache
from audit.data.records import Labels
from audit.errors import AuditInputError
from audit.registry import Runtime
from audit.stages import STAGES, StageContext, StageInputs
from tests.utility_factory import lesion_labels, memory_dataset, planted_lesion_images
from tests.utility_factory import one_thread  # noqa: F401  (autouse fixture: one torch thread)

SHAPE = (24, 24)
OPTIONS = {"target": "lesion", "n_boot": 100,
           "recipe": {"steps": 10, "batch_size": 16, "classifier_options": {"model": "test_resnet"}}}


def lesion_set(n, seed, name, split="train", labels=True):
    images, y = planted_lesion_images(n, SHAPE, seed)
    return memory_dataset(images, lesion_labels(y) if labels else [Labels()] * n, name, split,
                          images_per_patient=1 if name.startswith("syn") else 2)


@pytest.fixture(scope="module")
def real():
    return {"train": lesion_set(48, 0, "tr"), "holdout": lesion_set(32, 1, "te", "test")}


def inputs_with(real, synthetic):
    return StageInputs(data_config=None, train=real["train"], holdout=real["holdout"], synthetic=synthetic)


def test_requirements_give_the_reason_to_skip(real):
    stage = STAGES.create("utility", OPTIONS, Runtime())
    assert stage.requirements(inputs_with(real, None)) == "no synthetic images to train on"
    reason = stage.requirements(inputs_with(real, lesion_set(16, 2, "syn", labels=False)))
    assert reason.startswith("the synthetic images carry no 'lesion' labels for target 'lesion'")
    one_class = memory_dataset(np.zeros((4, *SHAPE), np.float32), lesion_labels([1, 1, 1, 1]), "syn1")
    assert "hold only class 'positive'" in stage.requirements(inputs_with(real, one_class))
    assert stage.requirements(inputs_with(real, lesion_set(16, 2, "syn"))) is None
    # auto: BI-RADS absent, a lesion column present → lesion
    auto = STAGES.create("utility", {**OPTIONS, "target": "auto"}, Runtime())
    assert auto.requirements(inputs_with(real, lesion_set(16, 2, "syn"))) is None
    with pytest.raises(AuditInputError, match="unknown target"):
        STAGES.create("utility", {**OPTIONS, "target": "tumour"}, Runtime())
    with pytest.raises(AuditInputError, match="unknown key|unknown parameter"):
        STAGES.create("utility", {**OPTIONS, "epochs": 3}, Runtime())


def test_second_model_reuses_the_cached_trtr_arm(real, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    runtime = Runtime(seed=0, batch_size=16)
    first_stage = STAGES.create("utility", OPTIONS, runtime)
    first = first_stage.run(inputs_with(real, lesion_set(32, 2, "synA")),
                            StageContext(tmp_path / "a", runtime, cache))
    assert (cache.builds, cache.hits) == (1, 0)
    assert set(first.figures) == {"tstr_auc", "trtr_auc", "gap"}
    assert first.figures["gap"].higher_is_better is False
    assert first.figures["gap"].value == pytest.approx(first.figures["trtr_auc"].value
                                                       - first.figures["tstr_auc"].value)
    assert (tmp_path / "a" / first.artefacts["roc"].path).is_file()
    assert first.details["sets"]["test"]["images"] == 32 and first.details["sets"]["tstr"]["images"] == 32
    assert first.details["trtr_from_cache"] is False

    second_stage = STAGES.create("utility", {**OPTIONS, "mixed": True}, runtime)
    second = second_stage.run(inputs_with(real, lesion_set(32, 3, "synB")), StageContext(tmp_path / "b", runtime, cache))
    assert (cache.builds, cache.hits) == (1, 1)  # the real arm was not trained again
    assert second.details["trtr_from_cache"] is True
    assert second.figures["trtr_auc"] == first.figures["trtr_auc"]
    assert "mixed_auc" in second.figures and second.details["sets"]["mixed"]["parts"] == {"trtr": 48, "tstr": 32}

    # another recipe is another baseline
    third = STAGES.create("utility", {**OPTIONS, "recipe": {**OPTIONS["recipe"], "steps": 11}}, runtime)
    third.run(inputs_with(real, lesion_set(32, 2, "synA")), StageContext(tmp_path / "c", runtime, cache))
    assert cache.builds == 2
