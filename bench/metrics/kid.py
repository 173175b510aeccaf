"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

Unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets,
as in ``torch_fidelity.metric_kid.kid_features_to_metric`` (torch-fidelity 0.4.0) and
``cleanfid.fid.kernel_distance`` (clean-fid 0.1.35). Differences: subsets come from a seeded
``numpy.random.Generator`` (clean-fid's are unseeded), and the kernels are computed in float64.
"""

import warnings

import numpy as np


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID between two feature sets: mean and standard deviation over subsets.

    Args:
        a: (N1, D) features (e.g. reference).
        b: (N2, D) features (e.g. generated).
        num_subsets: number of random subset pairs (100, as torch-fidelity and clean-fid).
        subset_size: samples per subset, drawn without replacement from each set (1000 by default). Lowered,
            with a warning, to ``min(N1, N2)`` when a set is smaller (clean-fid lowers it silently).
        seed: seed of the ``numpy.random.default_rng`` that draws the subsets; same seed, same result.

    Returns:
        ``(mean, std)`` of the unbiased MMD^2 over subsets (``np.std``, ddof = 0, like torch-fidelity).
        Slightly negative values are valid and mean the sets are very close.

    Raises:
        ValueError: on mismatched shapes, or fewer than 2 samples in a set.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N1, D) and (N2, D), got {a.shape} and {b.shape}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if m < subset_size:
        warnings.warn(f"KID subset_size lowered from {subset_size} to {m}, the size of the smaller set", stacklevel=2)
    rng = np.random.default_rng(seed)
    mmds = [
        _mmd2_unbiased(a[rng.choice(a.shape[0], m, replace=False)], b[rng.choice(b.shape[0], m, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(mmds)), float(np.std(mmds))
