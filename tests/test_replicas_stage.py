"""The replica stage of `audit run`: its figures, artefacts and flagged ids on planted copies, and the data-only
cache (fitted scorers, holdout nulls) reused for a second model on the same data."""

import numpy as np
import pytest

from attacks.replicas.stage import ReplicaStage
from audit.artifacts import ArtifactCache
from audit.errors import AuditInputError
from audit.registry import Runtime
from audit.stages import STAGES, StageContext, StageInputs
from tests.test_replicas import smooth_images, write_png


def folder_dataset(root, name, images):
    from audit.data.readers.folder import open_folder

    (root / name).mkdir()
    for i, image in enumerate(images):
        write_png(root / name / f"{name}{i:02d}.png", image)
    return open_folder(root / name, name=name)


@pytest.fixture
def data(tmp_path):
    images = smooth_images(42, (24, 24), seed=8)
    train = folder_dataset(tmp_path, "train", images[:16])
    holdout = folder_dataset(tmp_path, "holdout", images[16:36])
    model_a = folder_dataset(tmp_path, "model_a", np.concatenate([images[[2, 5, 9]], images[36:39]]))
    model_b = folder_dataset(tmp_path, "model_b", images[39:42])
    return tmp_path, train, holdout, model_a, model_b


def test_stage_is_registered_and_validates_its_section():
    stage = STAGES.create("replicas", {"scorers": ["ncc", "ssim"], "quantile": 0.95})
    assert isinstance(stage, ReplicaStage) and stage.params.scorers == ["ncc", "ssim"]
    assert ReplicaStage().params.scorers == ["ncc", "ssim", "ncc_reg", "ncc_reg_coarse", "ncc_local", "ncc_fm"]  # the default
    with pytest.raises(AuditInputError, match="unknown scorer 'nope'"):
        STAGES.create("replicas", {"scorers": ["nope"]})
    with pytest.raises(AuditInputError, match="unknown parameter 'kk'"):
        STAGES.create("replicas", {"scorers": ["ncc"], "options": {"ncc": {"kk": 1}}})
    assert STAGES.create("replicas").describe()["scorers"]["ncc_reg"]["max_angle"] == 10.0


def test_stage_flags_copies_and_reuses_the_data_only_cache(data):
    root, train, holdout, model_a, model_b = data
    cache = ArtifactCache(root / "cache")
    stage = ReplicaStage(ReplicaStage.Params(scorers=["ncc", "ssim"], quantile=0.95))
    inputs = StageInputs(data_config=None, train=train, holdout=holdout, synthetic=model_a)
    assert stage.requirements(inputs) is None
    assert stage.requirements(StageInputs(data_config=None, train=train, holdout=holdout)) == \
        "no synthetic images to compare"
    out = stage.run(inputs, StageContext(root / "out_a", Runtime(batch_size=4), cache))
    assert (cache.builds, cache.hits) == (4, 0)  # per scorer: its fitted state and its holdout null
    assert sorted(out.flagged_ids) == ["model_a00.png", "model_a01.png", "model_a02.png"]
    share = out.figures["flagged_share"]
    assert (share.value, share.n, share.higher_is_better) == (0.5, 6, False) and "wilson" in share.method
    crossfit = out.figures["holdout_flagged_share_crossfit"]
    assert crossfit.n == 20 and "cross-fitted" in crossfit.method
    # a clean holdout: nothing screened, nothing to warn about (the leak screen's own tests: test_replicas_screen)
    assert (out.details["holdout_screened_as_copies"], out.details["warnings"]) == (0, [])
    assert {a.kind for a in out.artefacts.values()} == {"table", "data", "gallery", "plot"}
    for artefact in out.artefacts.values():
        assert (root / "out_a" / artefact.path).stat().st_size > 0
    # a second model on the same data: nothing data-only is rebuilt, and the null is the same
    out_b = ReplicaStage(stage.params).run(StageInputs(data_config=None, train=train, holdout=holdout,
                                                       synthetic=model_b),
                                           StageContext(root / "out_b", Runtime(batch_size=4), cache))
    assert (cache.builds, cache.hits) == (4, 4)
    assert out_b.details["threshold"] == out.details["threshold"]  # the same cached null
    # the cached state scores exactly as a fresh fit does
    fresh = ReplicaStage(stage.params).run(StageInputs(data_config=None, train=train, holdout=holdout,
                                                       synthetic=model_b),
                                           StageContext(root / "out_c", Runtime(batch_size=4),
                                                        ArtifactCache(root / "other_cache")))
    assert fresh.details["threshold"] == out_b.details["threshold"]
    assert fresh.figures["ssim/flagged_share"] == out_b.figures["ssim/flagged_share"]
