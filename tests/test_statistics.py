"""Intervals and ROC helpers against closed forms and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from audit.metrics.statistics import (Estimate, auc_estimate, bootstrap_ci, optimal_threshold, rate_estimate,
                                      rates_at, roc_auc, tpr_at_fpr, wilson_interval)


def test_wilson_known_values():
    # 8/10 at 95%: (0.4902, 0.9433), computed by hand from the Wilson formula with z = 1.959964
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490162, abs=1e-5) and hi == pytest.approx(0.943317, abs=1e-5)
    # k = 0: the interval is [0, z²/(n+z²)]
    z2 = 1.959963985 ** 2
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and hi == pytest.approx(z2 / (50 + z2), abs=1e-9)
    # symmetric: k and n-k mirror
    lo1, hi1 = wilson_interval(3, 40)
    lo2, hi2 = wilson_interval(37, 40)
    assert lo1 == pytest.approx(1 - hi2) and hi1 == pytest.approx(1 - lo2)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_rate_estimate_dict():
    e = rate_estimate(5, 100)
    assert isinstance(e, Estimate)
    d = e.to_dict()
    assert d["value"] == 0.05 and d["n"] == 100 and d["higher_is_better"] is False
    assert d["ci_low"] < 0.05 < d["ci_high"] and d["method"].startswith("wilson")
    assert rate_estimate(0, 0).to_dict()["value"] is None  # nan → null in JSON


def test_auc_matches_pairwise_closed_form_and_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = rng.normal(size=300) + labels * 0.8
    scores[:20] = np.round(scores[:20])  # some ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(labels, scores) == pytest.approx(pairwise, abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert math.isnan(roc_auc(np.ones(5, bool), np.arange(5.0)))


def test_tpr_at_fpr_brute_force():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(200, bool), np.zeros(500, bool)]
    scores = np.r_[rng.normal(2, 1, 200), rng.normal(0, 1, 500)]
    best = 0.0
    for t in np.r_[np.unique(scores), -np.inf]:  # rules score >= t
        pred = scores >= t
        if (pred & ~labels).sum() / 500 <= 0.01:
            best = max(best, (pred & labels).sum() / 200)
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(best)
    # perfectly separated → TPR 1 at FPR 0
    assert tpr_at_fpr(labels, np.r_[np.full(200, 5.0), np.zeros(500)], 0.0) == 1.0


def test_rates_and_optimal_threshold_vs_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.random(150) < 0.4
    scores = np.round(rng.normal(size=150) + labels, 1)  # coarse → many ties
    t = 0.35
    r = rates_at(labels, scores, t)
    pred = scores > t
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert r["f1"] == pytest.approx(f1_score(labels, pred))
    thr, bal = optimal_threshold(labels, scores)
    brute = max(balanced_accuracy_score(labels, scores > c) for c in np.r_[np.unique(scores), -np.inf])
    assert bal == pytest.approx(brute)
    assert balanced_accuracy_score(labels, scores > thr) == pytest.approx(bal)


def test_bootstrap_ci_of_a_mean_matches_normal_theory():
    x = np.random.default_rng(3).normal(size=400)
    lo, hi = bootstrap_ci(np.mean, x, n_boot=2000, seed=0)
    half = 1.959964 / math.sqrt(400)  # σ = 1
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
    assert lo < x.mean() < hi


def test_auc_estimate_interval_contains_value_and_shrinks_with_n():
    rng = np.random.default_rng(4)

    def make(n):
        labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
        return labels, np.r_[rng.normal(1, 1, n), rng.normal(0, 1, n)]

    small, big = auc_estimate(*make(50), n_boot=300), auc_estimate(*make(800), n_boot=300)
    for e in (small, big):
        assert e.ci_low <= e.value <= e.ci_high and e.higher_is_better
    assert (big.ci_high - big.ci_low) < 0.5 * (small.ci_high - small.ci_low)
    # the population AUC of N(1,1) vs N(0,1) is Φ(1/√2) = 0.7602
    assert big.ci_low < 0.7602 < big.ci_high
