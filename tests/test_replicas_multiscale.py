"""The coarse-scale registration level (`ncc_reg_coarse`): a copy that lost its fine scales is found where the
single (fine) scale of `ncc_reg` ranks it below new images."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from attacks.replicas.registry import make_scorer

SHAPE = (40, 40)


def images(n, seed, pattern):
    """Each image: its own coarse anatomy + the same fine pattern (a detector's fixed pattern) at 3× its std."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = gaussian_filter(rng.normal(size=SHAPE), 4)
        x = coarse / coarse.std() + 3.0 * pattern
        out.append((x - x.min()) / (x.max() - x.min()))
    return np.stack(out).astype(np.float32)


def test_coarse_scale_finds_a_blurred_copy_the_fine_scale_misses():
    pattern = gaussian_filter(np.random.default_rng(0).normal(size=SHAPE), 0.7)
    pattern /= pattern.std()
    train, new = images(12, 1, pattern), images(10, 2, pattern)
    copies = np.stack([gaussian_filter(train[i], 2.5) for i in (3, 11)])  # heavy blur: the fine scale is gone
    queries = np.concatenate([new, copies])
    grid = {"max_angle": 0, "scales": [1.0], "flips": False}  # poses are not what this checks: shifts only (fast)
    fine = make_scorer("ncc_reg", grid).fit(train).score(queries)
    coarse_scorer = make_scorer("ncc_reg_coarse", grid).fit(train)
    coarse = coarse_scorer.score(queries)
    # at σ = 1 px the shared fine pattern makes new images look closer than the blurred copies' sources
    assert fine.scores[10:].max() < fine.scores[:10].max()
    # at σ = 3 px the copies stand out, with their sources
    assert coarse.scores[10:].min() > coarse.scores[:10].max() + 0.1
    assert coarse.nearest[10:].tolist() == [3, 11]
    assert coarse_scorer.describe()["resolved"]["prefilter_sigma"] == 3.0


def test_both_registration_scales_share_the_primary_weight_in_the_default():
    from attacks.replicas.combined import scorer_weights
    from attacks.replicas.registry import PRESETS

    assert "ncc_reg_coarse" in PRESETS["default"] and "ncc_reg_coarse" not in PRESETS["fast"]
    w = scorer_weights(["ncc", "ssim", "ncc_reg", "ncc_reg_coarse"])
    assert w == pytest.approx({"ncc": 0.1, "ssim": 0.1, "ncc_reg": 0.4, "ncc_reg_coarse": 0.4})
    assert scorer_weights(["ncc", "ssim", "ncc_reg"]) == {"ncc": 0.25, "ssim": 0.25, "ncc_reg": 0.5}  # unchanged
    assert scorer_weights(["ncc_reg", "ncc_reg_coarse"]) == {"ncc_reg": 0.5, "ncc_reg_coarse": 0.5}
