"""The fidelity stage of `audit run` (and of `audit score fidelity`): is the synthetic set like the real one?

Features of the real training split (the reference), the held-out real split and the synthetic set under one named
extractor; then FID, KID, precision/recall and density/coverage of synthetic against training, and the same of
held-out against training — the *real floor*: what a genuinely new sample of real images scores at these sizes.
`fid_over_floor` (synthetic FID / floor FID at equal n) reads without knowing the extractor's scale: 1 is "as
close to the training images as new real images are".

What depends only on the data is cached (`ArtifactCache`): the real feature sets (by dataset fingerprint, split,
extractor identity) and the floor's figures; a second audit on the same data extracts only the synthetic set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditInputError
from audit.extractors import DEFAULT_EXTRACTOR, build_extractor, parse_extractor_spec
from audit.extractors.feature_sets import FeatureSet, cached_feature_set, extract_feature_set
from audit.jsonio import write_json_atomic
from audit.metrics.fidelity import (
    Standardiser, fid_estimate, fid_mean_term_bias, fid_ratio_estimate, kid_estimate, manifold_estimates,
    manifold_indicators,
)
from audit.metrics.statistics import Estimate
from audit.parallel import executor_of
from audit.registry import Params, Runtime
from audit.stages import Artefact, StageContext, StageInputs, StageOutput

FLOOR_ARTEFACT = "fidelity-floor"
METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")
FID_BIAS_NOTE = ("FID is biased upwards at finite n (the mean term alone adds tr(Σ_real)/n_real + "
                 "tr(Σ_synthetic)/n_synthetic in expectation, reported as mean_term_bias); compare FIDs only at equal "
                 "n and under the same extractor and weights")


class FidelityParams(Params):
    extractor: str = DEFAULT_EXTRACTOR  # radiomics | domain | inception | timm:<model>
    weights: str | None = None  # the extractor's weights (inception: file; domain: encoder folder; timm: file)
    extractor_options: dict[str, Any] = {}  # the extractor's declared parameters, e.g. {slices_per_plane: 3}
    k_precision_recall: int = 3  # Kynkäänniemi et al.
    k_density_coverage: int = 5  # Naeem et al.
    n_boot: int = 200  # bootstrap resamples for every interval
    kid_subsets: int = 100
    kid_subset_size: int | None = None  # None: min(1000, n_real, n_synthetic)
    ratio_repeats: int = 10  # subsets averaged when fid_over_floor brings the larger set down to the smaller's n
    confidence: float = 0.95
    seed: int = 0
    pca_plot: bool = True


def minimum_set_size(params: FidelityParams) -> int:
    return max(params.k_precision_recall, params.k_density_coverage) + 1


def score_feature_sets(real: np.ndarray, synthetic: np.ndarray, params: FidelityParams,
                       device: str = "cpu") -> dict[str, dict[str, Any]]:
    """The six metrics of `synthetic` against `real` (features already standardised where the extractor says
    so): per metric the Estimate's fields plus what reading it needs (both n, k, the KID subset rule, FID bias)."""
    n_real, n_synthetic = len(real), len(synthetic)
    sizes = {"n_real": n_real, "n_synthetic": n_synthetic}
    fid = fid_estimate(real, synthetic, params.n_boot, params.confidence, params.seed)
    kid = kid_estimate(real, synthetic, params.kid_subsets, params.kid_subset_size, params.n_boot, params.confidence,
                       params.seed, device=device)
    indicators = manifold_indicators(real, synthetic, params.k_precision_recall, params.k_density_coverage,
                                     device=device)
    manifold = manifold_estimates(indicators, params.n_boot, params.confidence, params.seed)
    out = {"fid": {**fid.to_dict(), **sizes, "mean_term_bias": fid_mean_term_bias(real, synthetic),
                   "note": FID_BIAS_NOTE},
           "kid": {**kid.estimate.to_dict(), **sizes, "std_over_subsets": kid.std_over_subsets,
                   "subset_size": kid.subset_size, "subsets": kid.subsets}}
    for name, estimate in manifold.items():
        k = params.k_precision_recall if name in ("precision", "recall") else params.k_density_coverage
        out[name] = {**estimate.to_dict(), **sizes, "k": k}
    return out


def largest_feature_shifts(real: np.ndarray, synthetic: np.ndarray, names: list[str] | None,
                           count: int = 10) -> list[dict[str, Any]] | None:
    """The named features whose synthetic mean moved furthest from the real mean, in real standard deviations:
    what a large radiomic FID is made of (one feature nearly constant over the real set can dominate it)."""
    if names is None or len(names) != real.shape[1]:
        return None
    std = real.std(axis=0, ddof=1)
    shift = (synthetic.mean(axis=0) - real.mean(axis=0)) / np.where(std > 0, std, 1.0)
    order = np.argsort(-np.abs(shift))[:count]
    return [{"feature": names[i], "shift_in_real_sd": float(shift[i])} for i in order]


def as_estimate(entry: dict[str, Any]) -> Estimate:
    def number(key):
        value = entry[key]
        return float("nan") if value is None else float(value)

    return Estimate(number("value"), number("ci_low"), number("ci_high"), int(entry["n"]),
                    bool(entry["higher_is_better"]), str(entry["method"]))


def pca_plot(path: Path, real: np.ndarray, synthetic: np.ndarray, holdout: np.ndarray | None, title: str) -> None:
    """Real vs synthetic (and held-out real) in the plane of the real features' first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    components = min(2, real.shape[1], len(real))
    pca = PCA(n_components=components, random_state=0).fit(real)

    def project(x):
        z = pca.transform(x)
        return z if components == 2 else np.column_stack([z, np.zeros(len(z))])

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(*project(real).T, s=10, alpha=0.6, label=f"real train (n={len(real)})", color="tab:blue")
    if holdout is not None:
        ax.scatter(*project(holdout).T, s=10, alpha=0.6, label=f"real held-out (n={len(holdout)})", color="tab:green")
    ax.scatter(*project(synthetic).T, s=12, alpha=0.6, marker="x", label=f"synthetic (n={len(synthetic)})",
               color="tab:red")
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 of real ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 of real ({ratio[1]:.0%})" if components == 2 else "")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


class FidelityStage:
    name = "fidelity"
    Params = FidelityParams

    def __init__(self, params: FidelityParams, runtime: Runtime):
        self.params = params
        self.runtime = runtime
        parse_extractor_spec(params.extractor, params.weights, params.extractor_options)  # validate names early
        self._extractor = None

    # --- contract ------------------------------------------------------------------------------------------
    def extractor(self):
        if self._extractor is None:
            self._extractor = build_extractor(self.params.extractor, self.params.weights,
                                              self.params.extractor_options, self.runtime)
        return self._extractor

    def requirements(self, inputs: StageInputs) -> str | None:
        if inputs.synthetic is None:
            return "no synthetic images to score"
        needed = minimum_set_size(self.params)
        for label, dataset in (("real training", inputs.train), ("synthetic", inputs.synthetic)):
            if len(dataset) < needed:
                raise AuditInputError(None, f"the {label} set has {len(dataset)} images; fidelity needs at least "
                                            f"{needed} (k-NN metrics with k={needed - 1})")
        if inputs.synthetic.ndim != inputs.train.ndim:
            raise AuditInputError(None, f"synthetic images are {inputs.synthetic.ndim}D, real ones "
                                        f"{inputs.train.ndim}D")
        self.extractor().check_ndim(inputs.train.ndim)
        return None

    def describe(self) -> dict[str, Any]:
        out = {"params": self.params.model_dump(mode="json")}
        if self._extractor is not None:
            try:
                out["extractor"] = self._extractor.describe()
            except RuntimeError:  # an encoder not trained yet has no weights to name
                out["extractor"] = {"name": self._extractor.display_name}
        return out

    # --- work ----------------------------------------------------------------------------------------------
    def _features(self, dataset, split: str, context: StageContext, cached: bool) -> FeatureSet:
        progress = f"features: {split}" if self.runtime.progress else None
        executor = executor_of(self.runtime)  # in process, or Ray actors (--ray-address)
        if cached:
            return cached_feature_set(self.extractor(), dataset, split, context.cache, self.runtime.batch_size,
                                      progress, executor)
        return extract_feature_set(self.extractor(), dataset, self.runtime.batch_size, progress, executor)

    def _floor(self, inputs: StageInputs, context: StageContext, train: FeatureSet, standardise) -> dict[str, Any]:
        """Held-out real vs training real: computed once per (data, extractor, metric settings), then cached."""
        from audit.artifacts import dataset_fingerprint

        holdout = self._features(inputs.holdout, "holdout", context, cached=True)
        metric_settings = self.params.model_dump(mode="json", exclude={"extractor", "weights", "extractor_options",
                                                                        "pca_plot", "ratio_repeats"})
        key = {"train": dataset_fingerprint(inputs.train), "holdout": dataset_fingerprint(inputs.holdout),
               "extractor": self.extractor().identity(), "metrics": metric_settings}

        def build(folder: Path) -> None:
            scores = score_feature_sets(standardise(train.features), standardise(holdout.features), self.params,
                                        self.runtime.device)
            write_json_atomic(folder / "floor.json", scores)

        folder = context.cache.get_or_build(FLOOR_ARTEFACT, key, build)
        return {"scores": json.loads((folder / "floor.json").read_text()), "features": holdout}

    def run(self, inputs: StageInputs, context: StageContext) -> StageOutput:
        params = self.params
        extractor = self.extractor()
        extractor.prepare(inputs.train, context.cache)
        hits_before = context.cache.hits
        train = self._features(inputs.train, "train", context, cached=True)
        real_from_cache = context.cache.hits > hits_before
        synthetic = self._features(inputs.synthetic, "synthetic", context, cached=False)
        standardise = (Standardiser.fit(train.features) if extractor.standardise_against_reference
                       else (lambda x: np.asarray(x, np.float64)))
        real_z, synthetic_z = standardise(train.features), standardise(synthetic.features)

        scores = score_feature_sets(real_z, synthetic_z, params, self.runtime.device)
        output = StageOutput()
        for metric in METRICS:
            output.figures[metric] = as_estimate(scores[metric])

        result: dict[str, Any] = {"extractor": extractor.describe(), **scores,
                                  "n_real": len(train), "n_synthetic": len(synthetic)}
        holdout_z = None
        if inputs.holdout is not None and len(inputs.holdout) >= minimum_set_size(params):
            floor = self._floor(inputs, context, train, standardise)
            holdout_z = standardise(floor["features"].features)
            ratio = fid_ratio_estimate(synthetic_z, holdout_z, real_z, params.ratio_repeats, params.n_boot,
                                       params.confidence, params.seed)
            for metric in METRICS:
                output.figures[f"real_floor/{metric}"] = as_estimate(floor["scores"][metric])
            output.figures["fid_over_floor"] = ratio.estimate
            result["real_floor"] = {**floor["scores"], "n_holdout": len(holdout_z)}
            result["fid_over_floor"] = {**ratio.estimate.to_dict(), "size": ratio.size,
                                        "fid_synthetic_at_size": ratio.fid_evaluated,
                                        "fid_holdout_at_size": ratio.fid_baseline}
        else:
            reason = ("no held-out real images given" if inputs.holdout is None else
                      f"the held-out set has {len(inputs.holdout)} images, fewer than {minimum_set_size(params)}")
            output.skipped["real_floor"] = reason
            result["real_floor"] = None
            result["fid_over_floor"] = None
            result["notes"] = [f"real floor not computed: {reason}"]
        result["real_features_from_cache"] = real_from_cache
        result["largest_feature_shifts"] = largest_feature_shifts(real_z, synthetic_z, extractor.feature_names())

        context.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(context.out_dir / "fidelity.json", result)
        output.artefacts["fidelity"] = Artefact("fidelity.json", "data", "fidelity figures with both n per metric")
        if params.pca_plot:
            pca_plot(context.out_dir / "pca.png", real_z, synthetic_z, holdout_z,
                     f"features: {extractor.display_name}" + (" (z-scored on real)" if
                                                              extractor.standardise_against_reference else ""))
            output.artefacts["pca"] = Artefact("pca.png", "plot", "feature-space PCA of real vs synthetic")
        output.details = {"extractor": result["extractor"], "n_real": len(train), "n_synthetic": len(synthetic),
                          "n_holdout": None if holdout_z is None else len(holdout_z),
                          "kid_subset_size": scores["kid"]["subset_size"], "fid_mean_term_bias":
                          scores["fid"]["mean_term_bias"], "real_features_from_cache": real_from_cache,
                          "fid_note": FID_BIAS_NOTE, "largest_feature_shifts": result["largest_feature_shifts"]}
        if result["fid_over_floor"] is not None:
            output.details["fid_over_floor_size"] = result["fid_over_floor"]["size"]
        return output
