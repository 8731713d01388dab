"""Fidelity metrics between a real (reference) feature set and a synthetic one: pure functions on feature arrays.

- **FID** (Heusel et al. 2017): the Fréchet distance ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between Gaussians fitted to
  the two sets. Tr(Σ₁Σ₂)^½ is computed without a general matrix square root, so rank-deficient covariances (n < d,
  the usual case at small n) are exact rather than a numerical accident:
  - from statistics: Σ₁^½ by a symmetric eigendecomposition (negative eigenvalues are rounding, clipped to 0),
    then the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½;
  - from features, when the sets are smaller than the feature dimension: with centred rows A (n₁×d) and B (n₂×d),
    the non-zero eigenvalues of Σ₁Σ₂ are the squared singular values of A Bᵀ / √((n₁−1)(n₂−1)), so
    Tr(Σ₁Σ₂)^½ = ‖A Bᵀ‖_* / √((n₁−1)(n₂−1)) — an n₁×n₂ problem whatever d is.
  FID is biased upwards at finite n (Chong & Forsyth 2020): the mean term alone adds Tr Σ₁/n₁ + Tr Σ₂/n₂ in
  expectation. FIDs are comparable only at equal n and under the same extractor; `fid_estimate` reports both n
  and that mean-term bias.
- **KID** (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel (x·y/d + 1)³, averaged over
  random subsets of equal size (mean ± std over subsets, as torchmetrics / torch-fidelity report it). The subset
  size is fitted to the sets (min(1000, n₁, n₂)), never a fixed 1000 that fails below 1000 images.
- **Improved precision / recall** (Kynkäänniemi et al. 2019, k = 3): a sample is inside the other set's manifold
  when it lies within the k-NN ball of at least one of that set's samples.
- **Density / coverage** (Naeem et al. 2020, k = 5): density counts how many real k-NN balls hold each synthetic
  sample (divided by k; ≈ 1 when the sets match, > 1 when synthetic samples crowd dense real regions); coverage is
  the share of real samples whose k-NN ball holds at least one synthetic sample.

k-NN radii and ball memberships are computed in chunks (float64 torch), never as the full N×M distance matrix.

Confidence intervals (every figure is an `Estimate`):
- FID and KID resample both sets (bootstrap, counts as weights, so no replicate copies the features). A resample
  of a set repeats rows, which inflates FID (its mean term grows like the sample size shrinks); the FID interval
  is therefore the percentile interval shifted by the bootstrap estimate of that bias (centred on the reported
  value). KID's replicates exclude pairs of a row with its own repeat from the within-set sums, which keeps them
  unbiased, so its interval is the plain percentile interval.
- Precision, recall, density and coverage resample the samples they average over (synthetic samples for
  precision and density, real samples for recall and coverage) with the manifolds fixed: a resample of the
  manifold's own set would give repeated points k-NN radii of 0. The interval covers the sampling of the
  evaluated set, conditional on the reference manifold, and says so in its method.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch

from audit.metrics.statistics import Estimate

KID_MAX_SUBSET = 1000  # torch-fidelity's / torchmetrics' default subset size, used whenever both sets are larger
DEFAULT_CHUNK = 2048  # rows per block of a chunked distance or kernel computation


# ------------------------------------------------------------------------------------------------------------
# streaming moments


class StreamingMoments:
    """Mean and covariance of feature rows fed in batches (Chan et al.'s pairwise merge, float64), so the real
    set's statistics never need every feature in one array. Batch-size independent up to rounding.

    torch, in place: the d×d update is one matrix product and one rank-1 update, with no d×d temporaries, and it
    follows torch's thread setting (numpy's BLAS spun threads against a loaded machine: 10× slower at d = 132)."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self._mean = None if dim is None else torch.zeros(dim, dtype=torch.float64)
        self._m2 = None if dim is None else torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features) -> "StreamingMoments":
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (n, d), got shape {tuple(x.shape)}")
        if len(x) == 0:
            return self
        if self._mean is None:
            self._mean = torch.zeros(x.shape[1], dtype=torch.float64)
            self._m2 = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        if x.shape[1] != len(self._mean):
            raise ValueError(f"features have {x.shape[1]} columns, the statistics {len(self._mean)}")
        n_b = len(x)
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        delta = mean_b - self._mean
        total = self.n + n_b
        self._m2.addmm_(centred.T, centred)
        self._m2.addr_(delta, delta, alpha=self.n * n_b / total)
        self._mean.add_(delta, alpha=n_b / total)
        self.n = total
        return self

    @property
    def mean(self) -> np.ndarray:
        return self._mean.numpy().copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased sample covariance (n − 1), as torchmetrics and the FID literature use."""
        if self.n < 2:
            raise ValueError("a covariance needs at least 2 samples")
        return (self._m2 / (self.n - 1)).numpy()


# ------------------------------------------------------------------------------------------------------------
# FID


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^½) for covariance matrices, via the symmetric PSD form Σ₁^½ Σ₂ Σ₁^½ (exact when singular)."""
    root1 = _sqrtm_psd(np.asarray(cov1, np.float64))
    middle = root1 @ np.asarray(cov2, np.float64) @ root1
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ₁−μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr(Σ₁Σ₂)^½ (≥ 0 up to rounding; clipped at 0)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: {mu1.shape}, {cov1.shape} vs {mu2.shape}, {cov2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2)
    return max(float(value), 0.0)


GRAM_ROUTE_MAX_PAIRS = 25_000_000  # the n₁×n₂ cross-Gram matrix in float64: 200 MB at most


@dataclass(frozen=True)
class _GramSet:
    """What the Gram-route FID needs: both sets shifted by one common vector (FID is translation invariant; the
    shift keeps the products small), their squared row norms, and the n₁×n₂ cross products. No n×n matrix."""

    xs: np.ndarray
    ys: np.ndarray
    x_norms: np.ndarray
    y_norms: np.ndarray
    kxy: np.ndarray


def _gram_set(x: np.ndarray, y: np.ndarray) -> _GramSet:
    shift = x.mean(axis=0)
    xs, ys = x - shift, y - shift
    return _GramSet(xs, ys, (xs * xs).sum(1), (ys * ys).sum(1), xs @ ys.T)


def _weighted_centred_cross(kxy: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """D_w^½ (I − 1wᵀ/n₁) Kxy (I − v1ᵀ/n₂) D_v^½ restricted to rows/columns of non-zero weight: the cross matrix
    A*B*ᵀ of the (re)sampled sets, whose singular values give Tr(Σ₁Σ₂)^½."""
    rows, cols = np.flatnonzero(w), np.flatnonzero(v)
    n1, n2 = w.sum(), v.sum()
    z = kxy[rows][:, cols]
    z = z - (w[rows] @ z) / n1  # centre the x side: subtract the weighted mean row
    z = z - (z @ v[cols])[:, None] / n2  # centre the y side
    return np.sqrt(w[rows])[:, None] * z * np.sqrt(v[cols])[None, :]


def _fid_gram(g: _GramSet, w: np.ndarray, v: np.ndarray) -> float:
    """FID of the sets weighted by integer counts w, v (ones = the sets themselves): means and traces from the
    rows (O((n₁+n₂)d)), Tr(Σ₁Σ₂)^½ from the singular values of the centred cross matrix."""
    n1, n2 = w.sum(), v.sum()
    mean_x, mean_y = w @ g.xs / n1, v @ g.ys / n2
    diff = mean_x - mean_y
    trace1 = (w @ g.x_norms - n1 * mean_x @ mean_x) / (n1 - 1)
    trace2 = (v @ g.y_norms - n2 * mean_y @ mean_y) / (n2 - 1)
    cross = np.linalg.svd(_weighted_centred_cross(g.kxy, w, v), compute_uv=False).sum()
    return max(float(diff @ diff + trace1 + trace2 - 2 * cross / np.sqrt((n1 - 1) * (n2 - 1))), 0.0)


def _weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = w.sum()
    mean = w @ x / n
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred / (n - 1)


def _fid_cov(x: np.ndarray, y: np.ndarray, w: np.ndarray, v: np.ndarray) -> float:
    mu1, cov1 = _weighted_moments(x, w)
    mu2, cov2 = _weighted_moments(y, v)
    return frechet_distance(mu1, cov1, mu2, cov2)


def _gram_route_is_cheaper(n1: int, n2: int, d: int) -> bool:
    """Per evaluation the Gram route costs an n₁×n₂ SVD, the covariance route two d×d eigendecompositions and the
    weighted covariances (the cross products are built once and reused by every bootstrap replicate); the Gram
    route also keeps an n₁×n₂ matrix, so it is used only below `GRAM_ROUTE_MAX_PAIRS`."""
    gram = n1 * n2 * min(n1, n2) + (n1 + n2) * d
    return n1 * n2 <= GRAM_ROUTE_MAX_PAIRS and gram < (n1 + n2) * d * d + 2 * d ** 3


def check_features(x, y, minimum: int = 2, what: str = "FID") -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with the same d, got {x.shape} and {y.shape}")
    if len(x) < minimum or len(y) < minimum:
        raise ValueError(f"{what} needs at least {minimum} samples per set, got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features contain NaN or infinity")
    return x, y


def frechet_distance_features(x, y) -> float:
    """FID between two feature sets (rows), by whichever exact route is cheaper for their sizes."""
    x, y = check_features(x, y)
    w, v = np.ones(len(x)), np.ones(len(y))
    if _gram_route_is_cheaper(len(x), len(y), x.shape[1]):
        return _fid_gram(_gram_set(x, y), w, v)
    return _fid_cov(x, y, w, v)


def fid_mean_term_bias(x, y) -> float:
    """E‖x̄ − ȳ‖² − ‖μ₁ − μ₂‖² = Tr Σ₁/n₁ + Tr Σ₂/n₂ (estimated from the samples): how much of a finite-n FID
    its mean term alone adds even when the two distributions are identical."""
    x, y = check_features(x, y)
    return float(x.var(axis=0, ddof=1).sum() / len(x) + y.var(axis=0, ddof=1).sum() / len(y))


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator, draws: int | None = None) -> np.ndarray:
    """(n_boot, n) multiplicities of `draws` (default n) draws with replacement: resamples as weights, not as
    copied rows."""
    draws = n if draws is None else draws
    return np.stack([np.bincount(rng.integers(0, n, draws), minlength=n) for _ in range(n_boot)]).astype(np.float64)


def subset_indicator(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (0/1) of a random subset of m of n rows, drawn without replacement."""
    counts = np.zeros(n)
    counts[rng.permutation(n)[:m]] = 1
    return counts


def shifted_percentile_interval(value: float, replicates: np.ndarray, confidence: float,
                                lower_bound: float | None = 0.0) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates moved by their mean bias (mean(replicates) − value), for
    statistics whose resample is biased in a known direction (FID grows on repeated rows)."""
    replicates = replicates[np.isfinite(replicates)]
    if len(replicates) == 0:
        return float("nan"), float("nan")
    bias = float(replicates.mean() - value)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(replicates, [alpha, 1 - alpha]) - bias
    if lower_bound is not None:
        lo, hi = max(lo, lower_bound), max(hi, lower_bound)
    return float(lo), float(hi)


class FidOfResamples:
    """FID of the two sets under integer multiplicities (w over x's rows, v over y's): a bootstrap resample, or a
    subsample, as weights. The Gram or covariance route is chosen once for the sets' sizes; either is exact."""

    def __init__(self, x, y):
        self.x, self.y = check_features(x, y)
        cheaper = _gram_route_is_cheaper(len(self.x), len(self.y), self.x.shape[1])
        self.gram = _gram_set(self.x, self.y) if cheaper else None

    def __call__(self, w: np.ndarray, v: np.ndarray) -> float:
        if self.gram is not None:
            return _fid_gram(self.gram, w, v)
        return _fid_cov(self.x, self.y, w, v)


def fid_replicates(x, y, n_boot: int, seed: int = 0) -> np.ndarray:
    """FID of `n_boot` resamples of both sets (each set resampled with replacement, independently)."""
    fid_of = FidOfResamples(x, y)
    rng = np.random.default_rng(seed)
    weights_x, weights_y = bootstrap_counts(len(fid_of.x), n_boot, rng), bootstrap_counts(len(fid_of.y), n_boot, rng)
    return np.array([fid_of(w, v) for w, v in zip(weights_x, weights_y)])


def fid_estimate(real, synthetic, n_boot: int = 200, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """FID of synthetic against real with a bias-shifted bootstrap interval; n = the synthetic set's size (the
    real set's size goes beside it in the reports)."""
    real, synthetic = check_features(real, synthetic)
    value = frechet_distance_features(real, synthetic)
    if n_boot > 0:
        lo, hi = shifted_percentile_interval(value, fid_replicates(real, synthetic, n_boot, seed), confidence)
        method = (f"bootstrap {confidence:.0%} ({n_boot} resamples of both sets, percentile shifted by the "
                  f"bootstrap bias)")
    else:
        lo = hi = float("nan")
        method = "point estimate (no bootstrap)"
    return Estimate(value, lo, hi, len(synthetic), False, method)


@dataclass(frozen=True)
class FidRatio:
    estimate: Estimate
    size: int  # m: both compared sets at this size
    fid_evaluated: float  # FID(evaluated at m, reference)
    fid_baseline: float  # FID(baseline at m, reference)


def fid_ratio_estimate(evaluated, baseline, reference, repeats: int = 10, n_boot: int = 200,
                       confidence: float = 0.95, seed: int = 0) -> FidRatio:
    """FID(evaluated, reference) / FID(baseline, reference) with both sets at the same size m = min(n_e, n_b).

    FID grows as n shrinks, so the ratio of a synthetic set's FID to the held-out real floor is only fair at equal
    n: the larger set enters as the mean FID over `repeats` random subsets of size m. The interval resamples the
    reference (the same resample in numerator and denominator) and draws m rows with replacement from each
    compared set; its percentile interval is shifted by the bootstrap bias, as for FID."""
    numerator, denominator = FidOfResamples(reference, evaluated), FidOfResamples(reference, baseline)
    n_ref, n_e, n_b = len(numerator.x), len(numerator.y), len(denominator.y)
    m = min(n_e, n_b)
    rng = np.random.default_rng(seed)
    whole_ref = np.ones(n_ref)

    def at_size(fid_of, n):
        draws = 1 if n == m else repeats
        return float(np.mean([fid_of(whole_ref, subset_indicator(n, m, rng)) for _ in range(draws)]))

    fid_e, fid_b = at_size(numerator, n_e), at_size(denominator, n_b)
    if fid_b <= 0:
        nan = float("nan")
        return FidRatio(Estimate(nan, nan, nan, m, False, "undefined: the baseline FID is 0"), m, fid_e, fid_b)
    value = fid_e / fid_b
    lo = hi = float("nan")
    method = f"point estimate at n = {m} per compared set"
    if n_boot > 0:
        ref_counts = bootstrap_counts(n_ref, n_boot, rng)
        e_counts, b_counts = bootstrap_counts(n_e, n_boot, rng, m), bootstrap_counts(n_b, n_boot, rng, m)
        replicates = np.array([numerator(w, ve) / max(denominator(w, vb), 1e-300)
                               for w, ve, vb in zip(ref_counts, e_counts, b_counts)])
        lo, hi = shifted_percentile_interval(value, replicates, confidence)
        method = (f"both sets at n = {m}; bootstrap {confidence:.0%} ({n_boot}, reference shared by numerator and "
                  f"denominator, percentile shifted by the bootstrap bias)")
    return FidRatio(Estimate(value, lo, hi, m, False, method), m, fid_e, fid_b)


# ------------------------------------------------------------------------------------------------------------
# KID


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0) -> torch.Tensor:
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (a @ b.T * gamma + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                  coef: float = 1.0) -> float:
    """Unbiased MMD² with the polynomial kernel (torchmetrics' `poly_mmd` when both sets have equal size)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = (polynomial_kernel(a, b, degree, gamma, coef) for a, b in ((x, x), (y, y), (x, y)))
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.sum() / (m * n))


def kid_subset_size(n_real: int, n_synthetic: int, requested: int | None = None) -> int:
    """The subset size: as requested (checked), else min(1000, n_real, n_synthetic)."""
    largest = min(n_real, n_synthetic)
    size = min(KID_MAX_SUBSET, largest) if requested is None else int(requested)
    if size < 2 or size > largest:
        raise ValueError(f"KID subset size {size} must be between 2 and the smaller set's size ({largest})")
    return size


@dataclass(frozen=True)
class KidSubsets:
    mean: float
    std: float
    values: np.ndarray
    subset_size: int


def kid_subsets(real, synthetic, subsets: int = 100, subset_size: int | None = None, seed: int = 0,
                degree: int = 3, gamma: float | None = None, coef: float = 1.0,
                device: str = "cpu") -> KidSubsets:
    """KID as torchmetrics computes it: MMD² over `subsets` random subsets (drawn without replacement, the same
    size on both sides); mean and (population) standard deviation over the subsets."""
    real, synthetic = check_features(real, synthetic, what="KID")
    size = kid_subset_size(len(real), len(synthetic), subset_size)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(real).to(device)
    y = torch.from_numpy(synthetic).to(device)
    values = np.empty(subsets)
    for s in range(subsets):
        ix = torch.from_numpy(rng.permutation(len(real))[:size]).to(device)
        iy = torch.from_numpy(rng.permutation(len(synthetic))[:size]).to(device)
        values[s] = mmd2_unbiased(x[ix], y[iy], degree, gamma, coef)
    return KidSubsets(float(values.mean()), float(values.std()), values, size)


def _quadratic_forms(a: torch.Tensor, b: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, kernel,
                     chunk: int) -> torch.Tensor:
    """wa[:, r]ᵀ K(a, b) wb[:, r] for every replicate r, walking row chunks of K (never the whole matrix)."""
    out = torch.zeros(wa.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, len(a), chunk):
        block = kernel(a[start:start + chunk], b)  # (c, len(b))
        out += (wa[start:start + chunk] * (block @ wb)).sum(dim=0)
    return out


def kid_replicates(real, synthetic, n_boot: int, seed: int = 0, degree: int = 3, gamma: float | None = None,
                   coef: float = 1.0, chunk: int = DEFAULT_CHUNK, device: str = "cpu") -> np.ndarray:
    """Unbiased MMD² of `n_boot` resamples of both full sets, all replicates in one chunked pass over the kernel.

    With multiplicities w, the within-set sum over distinct rows is wᵀKw − Σ wᵢ² Kᵢᵢ over n² − Σ wᵢ² pairs: a
    row never pairs with its own repeat, so a replicate is an unbiased MMD² of the resample's distinct pairs."""
    real, synthetic = check_features(real, synthetic, what="KID")
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(real).to(device)
    y = torch.from_numpy(synthetic).to(device)
    w = torch.from_numpy(bootstrap_counts(len(real), n_boot, rng).T.copy()).to(device)  # (n1, B)
    v = torch.from_numpy(bootstrap_counts(len(synthetic), n_boot, rng).T.copy()).to(device)

    def kernel(a, b):
        return polynomial_kernel(a, b, degree, gamma if gamma is not None else 1.0 / real.shape[1], coef)

    def within(z, wz):
        diagonal = kernel_diagonal(z)
        total = _quadratic_forms(z, z, wz, wz, kernel, chunk) - (wz ** 2 * diagonal[:, None]).sum(dim=0)
        pairs = wz.sum(dim=0) ** 2 - (wz ** 2).sum(dim=0)
        return total / pairs

    def kernel_diagonal(z):
        g = gamma if gamma is not None else 1.0 / real.shape[1]
        return ((z * z).sum(dim=1) * g + coef) ** degree

    cross = _quadratic_forms(x, y, w, v, kernel, chunk) / (len(real) * len(synthetic))
    return (within(x, w) + within(y, v) - 2 * cross).cpu().numpy()


@dataclass(frozen=True)
class KidResult:
    estimate: Estimate
    std_over_subsets: float
    subset_size: int
    subsets: int


def kid_estimate(real, synthetic, subsets: int = 100, subset_size: int | None = None, n_boot: int = 200,
                 confidence: float = 0.95, seed: int = 0, device: str = "cpu") -> KidResult:
    """KID = mean MMD² over subsets (value), its std over subsets, and a bootstrap interval of MMD² over the
    full sets (percentile; replicates are unbiased, see `kid_replicates`)."""
    sub = kid_subsets(real, synthetic, subsets, subset_size, seed, device=device)
    if n_boot > 0:
        replicates = kid_replicates(real, synthetic, n_boot, seed + 1, device=device)
        alpha = (1 - confidence) / 2
        lo, hi = (float(q) for q in np.quantile(replicates, [alpha, 1 - alpha]))
        method = (f"mean over {subsets} subsets of {sub.subset_size}; bootstrap {confidence:.0%} ({n_boot} "
                  f"resamples of both full sets, percentile)")
    else:
        lo = hi = float("nan")
        method = f"mean over {subsets} subsets of {sub.subset_size} (no bootstrap)"
    estimate = Estimate(sub.mean, lo, hi, len(np.asarray(synthetic)), False, method)
    return KidResult(estimate, sub.std, sub.subset_size, subsets)


# ------------------------------------------------------------------------------------------------------------
# k-NN manifolds: precision / recall / density / coverage


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2 * a @ b.T
    return d2.clamp_min_(0)


def knn_radii(features, k: int, chunk: int = DEFAULT_CHUNK, device: str = "cpu") -> np.ndarray:
    """Distance of every row to its k-th nearest *other* row (the (k+1)-th smallest distance, itself included),
    chunked: memory O(chunk × n)."""
    x = torch.as_tensor(np.asarray(features, np.float64), device=device)
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {len(x)}")
    radii = torch.empty(len(x), dtype=torch.float64, device=device)
    for start in range(0, len(x), chunk):
        d2 = _squared_distances(x[start:start + chunk], x)
        radii[start:start + chunk] = torch.topk(d2, k + 1, dim=1, largest=False).values[:, k]
    return radii.sqrt().cpu().numpy()


@dataclass(frozen=True)
class BallCounts:
    per_query: np.ndarray  # (Q,) how many balls hold each query
    per_centre: np.ndarray  # (C,) bool: the ball holds at least one query


def ball_counts(queries, centres, radii, chunk: int = DEFAULT_CHUNK, device: str = "cpu",
                tolerance: float = 1e-9) -> BallCounts:
    """Which of the balls B(centre_i, radius_i) hold each query (boundary included, with a relative tolerance
    so that a point exactly at a k-NN radius counts as inside, as it does in exact arithmetic)."""
    q = torch.as_tensor(np.asarray(queries, np.float64), device=device)
    c = torch.as_tensor(np.asarray(centres, np.float64), device=device)
    r2 = torch.as_tensor(np.asarray(radii, np.float64), device=device).pow(2) * (1 + tolerance) + tolerance
    per_query = torch.zeros(len(q), dtype=torch.int64, device=device)
    per_centre = torch.zeros(len(c), dtype=torch.bool, device=device)
    for start in range(0, len(q), chunk):
        inside = _squared_distances(q[start:start + chunk], c) <= r2.unsqueeze(0)
        per_query[start:start + chunk] = inside.sum(dim=1)
        per_centre |= inside.any(dim=0)
    return BallCounts(per_query.cpu().numpy(), per_centre.cpu().numpy())


@dataclass(frozen=True)
class ManifoldIndicators:
    """Per-sample quantities whose means are the four k-NN metrics (so their CIs bootstrap the means)."""

    precision: np.ndarray  # per synthetic sample: inside some real k_pr-ball (0/1)
    recall: np.ndarray  # per real sample: inside some synthetic k_pr-ball (0/1)
    density: np.ndarray  # per synthetic sample: number of real k_dc-balls holding it, / k_dc
    coverage: np.ndarray  # per real sample: its k_dc-ball holds some synthetic sample (0/1)


def manifold_indicators(real, synthetic, k_precision_recall: int = 3, k_density_coverage: int = 5,
                        chunk: int = DEFAULT_CHUNK, device: str = "cpu") -> ManifoldIndicators:
    real, synthetic = check_features(real, synthetic, minimum=max(k_precision_recall, k_density_coverage) + 1,
                                     what=f"precision/recall (k={k_precision_recall}) and density/coverage "
                                          f"(k={k_density_coverage})")
    real_pr = ball_counts(synthetic, real, knn_radii(real, k_precision_recall, chunk, device), chunk, device)
    synthetic_pr = ball_counts(real, synthetic, knn_radii(synthetic, k_precision_recall, chunk, device), chunk, device)
    real_dc = ball_counts(synthetic, real, knn_radii(real, k_density_coverage, chunk, device), chunk, device)
    return ManifoldIndicators(
        precision=(real_pr.per_query > 0).astype(np.float64),
        recall=(synthetic_pr.per_query > 0).astype(np.float64),
        density=real_dc.per_query / k_density_coverage,
        coverage=real_dc.per_centre.astype(np.float64),
    )


def mean_estimate(values: np.ndarray, higher_is_better: bool, over: str, n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> Estimate:
    """The mean of per-sample values with a percentile bootstrap over those samples (vectorised)."""
    values = np.asarray(values, np.float64)
    value = float(values.mean())
    if n_boot <= 0:
        return Estimate(value, float("nan"), float("nan"), len(values), higher_is_better, "point estimate")
    rng = np.random.default_rng(seed)
    means = bootstrap_counts(len(values), n_boot, rng) @ values / len(values)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(value, float(lo), float(hi), len(values), higher_is_better,
                    f"bootstrap {confidence:.0%} ({n_boot}) over the {over}, manifolds fixed")


def manifold_estimates(indicators: ManifoldIndicators, n_boot: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, Estimate]:
    """precision, recall, density, coverage as Estimates."""
    synthetic, real = "synthetic samples", "real samples"
    return {
        "precision": mean_estimate(indicators.precision, True, synthetic, n_boot, confidence, seed),
        "recall": mean_estimate(indicators.recall, True, real, n_boot, confidence, seed + 1),
        "density": mean_estimate(indicators.density, True, synthetic, n_boot, confidence, seed + 2),
        "coverage": mean_estimate(indicators.coverage, True, real, n_boot, confidence, seed + 3),
    }


# ------------------------------------------------------------------------------------------------------------
# feature standardisation (FRD's z-scoring against the reference set)


@dataclass(frozen=True)
class Standardiser:
    """z-scores against the reference set's per-feature mean and standard deviation; a feature constant over the
    reference keeps scale 1 (dividing by 0 would make any synthetic variation in it infinite)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, reference: np.ndarray) -> "Standardiser":
        reference = np.asarray(reference, np.float64)
        std = reference.std(axis=0, ddof=1) if len(reference) > 1 else np.zeros(reference.shape[1])
        return cls(reference.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) / self.scale
