"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

Unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets,
as in ``torch_fidelity.metric_kid.kid_features_to_metric`` (torch-fidelity 0.4.0) and
``cleanfid.fid.kernel_distance`` (clean-fid 0.1.35). Differences: subsets come from a seeded
``numpy.random.Generator`` (clean-fid's are unseeded), and the kernels are computed in float64.
"""

import warnings

import numpy as np

# Below this many kernel entries (about 130 MB in float64) the three whole-set kernels are computed once and every
# subset is summed from them, instead of three subset kernels per subset.
WHOLE_KERNEL_ENTRIES = 2**24


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    k_xx, k_yy, k_xy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def _mmd2_from_whole(a: np.ndarray, b: np.ndarray, subsets: list) -> list[float]:
    """``_mmd2_unbiased`` of each (rows of a, rows of b) subset, as sums over the whole-set kernels."""
    m = len(subsets[0][0])
    k_aa, k_bb, k_ab = _kernel(a, a), _kernel(b, b), _kernel(a, b)
    in_a, in_b = np.zeros((len(subsets), a.shape[0])), np.zeros((len(subsets), b.shape[0]))
    for i, (rows_a, rows_b) in enumerate(subsets):
        in_a[i, rows_a], in_b[i, rows_b] = 1.0, 1.0
    sum_aa, sum_bb = ((in_a @ k_aa) * in_a).sum(1), ((in_b @ k_bb) * in_b).sum(1)
    trace_aa, trace_bb = in_a @ np.diag(k_aa), in_b @ np.diag(k_bb)
    within = (sum_aa - trace_aa + sum_bb - trace_bb) / (m * (m - 1))
    return (within - 2.0 * ((in_a @ k_ab) * in_b).sum(1) / (m * m)).tolist()


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
    subsets = [(rng.choice(a.shape[0], m, replace=False), rng.choice(b.shape[0], m, replace=False))
               for _ in range(num_subsets)]
    if (a.shape[0] + b.shape[0]) ** 2 <= WHOLE_KERNEL_ENTRIES and a.shape[0] * b.shape[0] < num_subsets * m * m:
        mmds = _mmd2_from_whole(a, b, subsets)
    else:
        mmds = [_mmd2_unbiased(a[rows_a], b[rows_b]) for rows_a, rows_b in subsets]
    return float(np.mean(mmds)), float(np.std(mmds))
