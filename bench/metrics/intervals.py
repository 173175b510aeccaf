"""95% intervals of the table's metrics: the shared conventions, the CLIP-score and binomial intervals, and the
judgements the reports make with them (two rows within noise; a sweep's best point beating its ends).

Every interval targets the metric's expectation over independent runs of the same size (``E[FID_N]``,
``E[precision_N]``, ...) with N the number of generated samples and the reference set held fixed, and is centred
on the observed value. Generated samples are treated as i.i.d.; with the protocol's fixed caption list the
run-to-run spread comes from the noise alone, so the intervals are, if anything, conservative. FID and FID∞:
``bench.metrics.fid_uncertainty``; precision and recall: ``bench.metrics.prdc_uncertainty``; the method of each is
in ``METHODS`` and ``docs/metrics.md``.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

CONFIDENCE = 0.95

METHODS = {
    "fid": "delta method (influence function of FID in the generated mean and covariance), centred on FID_N",
    "fid_inf": "Chong & Forsyth 2020 intercept of FID_n on 1/n over nested prefixes; delta-method interval",
    "precision": "Wilson score interval (independent per-sample indicators given the reference)",
    "recall": "delete-d jackknife, d = N/2 (half-sampling), k-NN radii recomputed in each half",
    "clip_score": "normal interval of the mean of per-sample cosines",
}

LOWER_IS_BETTER = {"fid": True, "fid_inf": True, "kid": True, "precision": False, "recall": False,
                   "clip_score": False}


def z_score(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(scipy.stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), inside [0, 1] by construction."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = z_score(confidence)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, where rounding leaves 1e-18
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def mean_interval(values: np.ndarray, name: str, confidence: float = CONFIDENCE) -> dict:
    """Normal interval of the mean of independent per-sample values (a CLIP or HPS score), as
    ``{name, name_lo, name_hi, name_se}``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"values must be (N,) with N >= 2, got shape {values.shape}")
    mean, se = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    z = z_score(confidence)
    return {name: mean, f"{name}_lo": mean - z * se, f"{name}_hi": mean + z * se, f"{name}_se": se}


def clip_score_interval(scores: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Normal interval of the CLIP score from the per-sample cosines (``bench.metrics.clipscore.clip_scores``):
    ``clip_score``, ``clip_score_lo``, ``clip_score_hi``, ``clip_score_se``."""
    return mean_interval(scores, "clip_score", confidence)


def _bounds(row: Mapping, metric: str) -> tuple[float, float]:
    lo, hi = float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{metric}: no valid interval in row ({lo}, {hi})")
    return lo, hi


def within_noise(a: Mapping, b: Mapping, metric: str) -> bool:
    """Whether two table rows are within noise of each other on ``metric``: their intervals overlap.

    Args:
        a: a row with ``{metric}_lo`` and ``{metric}_hi``.
        b: another such row.
        metric: column name, e.g. ``"fid"``.

    Returns:
        True when the two closed intervals share a point.

    Raises:
        KeyError: when a bound is missing; ValueError: when one is NaN or ``lo > hi``.
    """
    (a_lo, a_hi), (b_lo, b_hi) = _bounds(a, metric), _bounds(b, metric)
    return a_lo <= b_hi and b_lo <= a_hi


def sweep_verdict(rows: Sequence[Mapping], metric: str, lower_is_better: bool | None = None) -> dict:
    """Whether a sweep's best point beats both of its ends beyond the interval.

    Args:
        rows: the sweep's rows in the order of the swept parameter, each with ``metric``, ``{metric}_lo`` and
            ``{metric}_hi``.
        metric: column name.
        lower_is_better: default from ``LOWER_IS_BETTER`` (FID lower, precision/recall/CLIP higher).

    Returns:
        Dict with ``best`` (index of the best point value), ``beats_first`` and ``beats_last`` (its interval lies
        entirely on the better side of that end's interval, without touching it; False when the best point is
        that end), and ``beats_both``.

    Raises:
        ValueError: with fewer than two rows or an invalid interval; KeyError: an unknown metric without
            ``lower_is_better``.
    """
    if len(rows) < 2:
        raise ValueError(f"a sweep needs at least two rows, got {len(rows)}")
    lower = LOWER_IS_BETTER[metric] if lower_is_better is None else bool(lower_is_better)
    values = np.array([float(row[metric]) for row in rows])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{metric}: non-finite values in the sweep")
    best = int(np.argmin(values) if lower else np.argmax(values))
    best_lo, best_hi = _bounds(rows[best], metric)

    def beats(end: int) -> bool:
        if end == best:
            return False
        end_lo, end_hi = _bounds(rows[end], metric)
        return best_hi < end_lo if lower else best_lo > end_hi

    first, last = beats(0), beats(len(rows) - 1)
    return {"best": best, "beats_first": first, "beats_last": last, "beats_both": first and last}
