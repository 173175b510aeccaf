"""FID's interval and FID∞ (Chong & Forsyth, CVPR 2020, "Effectively Unbiased FID and Inception Score and where
to find them"), against fixed reference statistics, in two passes over the generated features.

- FID: delta method. The first-order expansion of FID in the generated mean and covariance gives one influence
  value per sample, ``IF(x) = 2 (mu - mu_ref) . (x - mu) + |x - mu|^2 - (x - mu)' W M^-1/2 W' (x - mu) + const``
  with ``W W' = sigma_ref`` and ``M = W' sigma W``; ``se = std(IF) / sqrt(N)``. Plain bootstrap percentiles are
  biased for FID (a resample has duplicated rows, so its FID sits above ``E[FID_N]``) and cost one D x D
  covariance and eigendecomposition per resample. When the two distributions are equal the linear term
  vanishes and FID's spread comes from the quadratic term; the plug-in gradient, evaluated at the noisy sample
  covariance, is then not zero and over-estimates that spread, so the interval is conservative near the floor
  rather than too narrow (coverage measured in ``tests/test_intervals.py`` at the floor and well above it).
- FID∞: Chong & Forsyth fit ``FID_n = FID∞ + slope / n`` by least squares at ``num_points`` sizes from
  ``min_size`` (5,000) to N and report the intercept. Here the sizes are nested prefixes of one seeded
  permutation, so the covariances accumulate in one pass over the samples. The intercept is a fixed linear
  combination of the ``FID_n``, hence, to first order, ``sum_i w_i IF(x_i)`` with known weights ``w_i``;
  ``se = std(IF) * |w|``. With the reference fixed, FID∞ estimates the Fréchet distance between the
  reference's empirical Gaussian and the generator's population Gaussian.
"""

import math

import numpy as np
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

from bench.metrics.intervals import CONFIDENCE, z_score

FID_INF_MIN_SIZE = 5000  # Chong & Forsyth's smallest subset for 2048-d Inception features
FID_INF_POINTS = 15  # ... and their number of sizes
BLOCK = 4096  # rows of generated features per float64 block in the FID passes
# The D x D factorisations run on one BLAS thread: tridiagonalisation is memory bound, gains little from threads on
# an idle machine and collapses (tens of times slower) when the cores are shared with other work.
LAPACK_THREADS = 1


def fid_infinity_sizes(n: int, min_size: int = FID_INF_MIN_SIZE, num_points: int = FID_INF_POINTS) -> np.ndarray:
    """Subset sizes of the FID∞ fit: ``num_points`` evenly spaced from ``min(min_size, n // 2)`` to ``n``.

    Args:
        n: number of generated samples.
        min_size: smallest subset (Chong & Forsyth: 5,000); lowered to ``n // 2`` for smaller runs.
        num_points: number of sizes (Chong & Forsyth: 15); duplicates after rounding are dropped.

    Returns:
        Increasing int64 sizes ending at ``n``.

    Raises:
        ValueError: when fewer than two distinct sizes of at least 2 samples result.
    """
    low = min(int(min_size), n // 2)
    sizes = np.unique(np.linspace(low, n, int(num_points)).astype(np.int64))
    if num_points < 2 or low < 2 or len(sizes) < 2:
        raise ValueError(f"FID∞ needs two or more subset sizes of at least 2 samples: n = {n}, min_size = {min_size}, "
                         f"num_points = {num_points}")
    return sizes


def intercept_weights(sizes: np.ndarray) -> np.ndarray:
    """Weights ``c`` with ``c @ fids`` = the least-squares intercept of ``fids`` on ``1 / sizes``."""
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    centred = x - x.mean()
    return 1.0 / len(x) - x.mean() * centred / (centred @ centred)


def _reference_factor(sigma_ref: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(W, lower)``, ``W @ W.T == sigma_ref``: Cholesky (lower triangular), else ``U sqrt(max(lambda, 0))``."""
    with threadpool_limits(limits=LAPACK_THREADS, user_api="blas"):
        try:
            return np.asfortranarray(np.linalg.cholesky(sigma_ref)), True
        except np.linalg.LinAlgError:
            values, vectors = np.linalg.eigh(sigma_ref)
            return vectors * np.sqrt(np.clip(values, 0.0, None)), False


def _times(x: np.ndarray, w: np.ndarray, lower: bool) -> np.ndarray:
    """``x @ w``; for a lower-triangular ``w``, as ``(w' x')'`` with BLAS ``trmm`` (half the flops, no copy)."""
    if not lower:
        return x @ w
    return scipy.linalg.blas.dtrmm(1.0, w, x.T, side=0, lower=1, trans_a=1, overwrite_b=1).T


def fid_intervals(
    mu_ref: np.ndarray,
    sigma_ref: np.ndarray,
    fake: np.ndarray,
    confidence: float = CONFIDENCE,
    min_size: int = FID_INF_MIN_SIZE,
    num_points: int = FID_INF_POINTS,
    seed: int = 0,
    block: int = BLOCK,
) -> dict:
    """FID with its interval, and FID∞ with its interval, against fixed reference statistics.

    ``tr sqrt(sigma_ref sigma)`` is computed as ``tr sqrt(W' sigma W)`` (``W W' = sigma_ref``), a symmetric
    eigenvalue problem, so each of the ``num_points`` FIDs costs one ``eigvalsh``; the covariances of the nested
    prefixes accumulate in one pass. A second pass computes the influence values.

    Args:
        mu_ref: (D,) reference mean (``bench.metrics.fid.feature_statistics`` of the reference set).
        sigma_ref: (D, D) reference covariance.
        fake: (N, D) generated features, N > D for a meaningful delta method (the rank-deficient case returns
            numbers, with a pseudo-inverse in the influence values).
        confidence: two-sided level of both intervals.
        min_size: smallest FID∞ subset (see ``fid_infinity_sizes``).
        num_points: number of FID∞ subset sizes.
        seed: seed of the permutation whose prefixes are the FID∞ subsets,
            ``numpy.random.default_rng(seed).permutation(N)`` (FID and its interval do not depend on it beyond
            rounding).
        block: rows per float64 block; memory is about ``block x D x 8`` bytes times a few, plus D x D matrices.

    Returns:
        Dict with ``fid``, ``fid_lo``, ``fid_hi``, ``fid_se`` (FID_N: equal to ``fid_from_features`` up to
        rounding), ``fid_inf``, ``fid_inf_lo``, ``fid_inf_hi``, ``fid_inf_se``, ``fid_inf_slope`` (the fitted
        ``k`` in ``FID_n = FID∞ + k / n``), ``fid_inf_sizes`` and ``fid_inf_curve`` (lists: the sizes and their
        FIDs), as Python floats and ints.

    Raises:
        ValueError: on mismatched shapes or too few samples for two FID∞ sizes.
    """
    z = z_score(confidence)
    mu_ref = np.asarray(mu_ref, dtype=np.float64)
    sigma_ref = np.asarray(sigma_ref, dtype=np.float64)
    fake = np.asarray(fake)
    if fake.ndim != 2:
        raise ValueError(f"fake must be (N, D), got shape {fake.shape}")
    n, d = fake.shape
    if mu_ref.shape != (d,) or sigma_ref.shape != (d, d):
        raise ValueError(f"reference statistics must be ({d},) and ({d}, {d}), got {mu_ref.shape}, {sigma_ref.shape}")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    sizes = fid_infinity_sizes(n, min_size, num_points)
    order = np.random.default_rng(seed).permutation(n)
    w, lower = _reference_factor(sigma_ref)
    tr_ref = float(np.trace(sigma_ref))
    mean = fake.mean(axis=0, dtype=np.float64)
    offset = mean - mu_ref

    # Pass 1: prefix sums of the whitened features y = (x - mean) W, centred on the full mean for accuracy.
    gram, y_sum, x_sum = np.zeros((d, d)), np.zeros(d), np.zeros(d)
    square_sum, start, curve = 0.0, 0, []
    for size in sizes:
        for lo in range(start, size, block):
            x = fake[order[lo:min(lo + block, size)]].astype(np.float64) - mean
            x_sum += x.sum(axis=0)
            square_sum += float(np.einsum("ij,ij->", x, x))
            y = _times(x, w, lower)  # may overwrite x
            gram += y.T @ y
            y_sum += y.sum(axis=0)
        start = size
        m_cov = (gram - np.outer(y_sum, y_sum) / size) / (size - 1)
        m_cov = (m_cov + m_cov.T) / 2.0
        tr_fake = (square_sum - x_sum @ x_sum / size) / (size - 1)
        diff = offset + x_sum / size
        with threadpool_limits(limits=LAPACK_THREADS, user_api="blas"):
            if size == n:
                values, vectors = np.linalg.eigh(m_cov)
            else:
                values = np.linalg.eigvalsh(m_cov)
        curve.append(float(diff @ diff + tr_ref + tr_fake - 2.0 * np.sqrt(np.clip(values, 0.0, None)).sum()))
    curve = np.array(curve)

    # Pass 2: influence values IF = 2 offset.x + |x|^2 - |x W V M^-1/4|^2, centred (x is centred on the mean).
    floor = max(float(values.max()), 0.0) * d * np.finfo(np.float64).eps
    inv_quarter = np.where(values > floor, np.clip(values, floor, None) ** -0.25, 0.0)
    projection = w @ (vectors * inv_quarter)
    influence = np.empty(n)
    for lo in range(0, n, block):
        x = fake[lo:lo + block].astype(np.float64) - mean
        z_proj = x @ projection
        influence[lo:lo + block] = (
            2.0 * (x @ offset) + np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", z_proj, z_proj)
        )
    sd_influence = float(np.std(influence, ddof=1))

    # FID∞ = c @ curve; to first order FID_n - E = mean of the first n influence values (in permutation order),
    # so FID∞ - E = sum_i w_i IF_i with w_i = sum over sizes n_k >= position i of c_k / n_k.
    c = intercept_weights(sizes)
    fid_inf = float(c @ curve)
    slope = float((curve - fid_inf) @ (1.0 / sizes) / ((1.0 / sizes) @ (1.0 / sizes)))
    per_sample = np.cumsum((c / sizes)[::-1])[::-1]  # weight of a sample whose position is in segment k
    segment = np.diff(np.concatenate([[0], sizes]))
    weight_norm = math.sqrt(float(segment @ per_sample**2))

    fid_n = float(curve[-1])
    fid_se = sd_influence / math.sqrt(n)
    fid_inf_se = sd_influence * weight_norm
    return {
        "fid": fid_n,
        "fid_lo": fid_n - z * fid_se,
        "fid_hi": fid_n + z * fid_se,
        "fid_se": fid_se,
        "fid_inf": fid_inf,
        "fid_inf_lo": fid_inf - z * fid_inf_se,
        "fid_inf_hi": fid_inf + z * fid_inf_se,
        "fid_inf_se": fid_inf_se,
        "fid_inf_slope": slope,
        "fid_inf_sizes": [int(s) for s in sizes],
        "fid_inf_curve": [float(f) for f in curve],
    }
