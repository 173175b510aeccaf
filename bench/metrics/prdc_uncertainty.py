"""Intervals of improved precision and recall, from per-sample structure kept in the metric's own distance passes.

- precision: given the reference, whether each generated sample falls inside the real manifold is an independent
  Bernoulli draw, so the Wilson score interval is exact up to the normal approximation.
- recall: whether a real sample is covered depends on all generated samples and on their k-NN radii among
  themselves. Delete-one jackknife over-estimates this non-smooth statistic's spread, and bootstrap resamples
  (duplicated rows, zero radii) or subsets with the full-set radii held fixed misstate it. Used: the delete-d
  jackknife with d = N/2 (half-sampling, Shao & Wu 1989), each half-sample's k-NN radii recomputed within it from
  each generated sample's nearest neighbours recorded in the same distance pass.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.metrics.intervals import CONFIDENCE, wilson_interval, z_score
from bench.metrics.prdc import ROW_BLOCK, as_tensors, radii
from bench.tf32 import tf32

RECALL_RESAMPLES = 200  # half-samples for the recall interval: about 5% relative error on its half-width
COVER_CAP = 20  # a real sample covered by this many fakes is covered in every half-sample but with p ~ 2^-20


@dataclass(frozen=True)
class PrecisionRecallSamples:
    """What ``precision_recall_samples`` keeps from its distance passes for the precision and recall intervals.

    Attributes:
        precision: as ``bench.metrics.prdc.precision_recall``.
        recall: as ``bench.metrics.prdc.precision_recall``.
        k: neighbourhood size of the radii.
        n_real: number of real samples.
        inside: (M,) bool, generated sample i inside the real manifold (``precision = inside.mean()``).
        neighbour_index: (M, L) int64, each generated sample's L nearest generated samples (itself included),
            nearest first.
        neighbour_dist: (M, L) float32 distances to them; column ``k`` is the full-set radius.
        always_covered: real samples covered by ``COVER_CAP`` or more generated samples at full-set radii.
        pair_real: (P,) int64 real index of each (real, generated) pair closer than the generated sample's
            L-th neighbour distance (the largest radius it can have in a half-sample), for the other reals.
        pair_fake: (P,) int64 generated index of each pair.
        pair_dist: (P,) float32 distance of each pair.
    """

    precision: float
    recall: float
    k: int
    n_real: int
    inside: np.ndarray
    neighbour_index: np.ndarray
    neighbour_dist: np.ndarray
    always_covered: int
    pair_real: np.ndarray
    pair_fake: np.ndarray
    pair_dist: np.ndarray


def precision_recall_samples(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    row_block: int = ROW_BLOCK,
    device: str | torch.device | None = None,
    neighbours: int | None = None,
) -> PrecisionRecallSamples:
    """Improved precision and recall, plus the per-sample structure their intervals need, in the same passes.

    Meant to replace ``bench.metrics.prdc.precision_recall`` in a run: the distance blocks, radii and
    comparisons are the same calls in the same order (float32 ``torch.cdist``, ``topk``, ``<=``), so precision
    and recall are identical to it. Extra work: ``topk`` of ``neighbours`` instead of ``k + 1`` in the
    generated set's radius pass, a count instead of an ``any`` in the coverage passes, and the pairs near
    rarely covered reals.

    Args:
        real: (N, D) reference features.
        fake: (M, D) generated features.
        k: neighbourhood size of the k-NN radii (3).
        row_block: rows per distance block, as in ``precision_recall``.
        device: torch device for the distance blocks; default CPU.
        neighbours: length L of each generated sample's neighbour list, itself included; default ``8 k + 1``
            (25 for k = 3), enough that a half-sample keeps ``k + 1`` of them with probability 1 - 2e-5.

    Returns:
        A ``PrecisionRecallSamples``.

    Raises:
        ValueError: on mismatched shapes, or fewer than ``k + 1`` samples in a set.
    """
    real, fake = as_tensors(real, fake, k, row_block, device)
    n_fake = fake.shape[0]
    length = min(int(neighbours) if neighbours is not None else 8 * k + 1, n_fake)
    if length < k + 1:
        raise ValueError(f"neighbours must be at least k + 1 = {k + 1}, got {neighbours}")

    with torch.inference_mode(), tf32(False):  # TF32 would round distances to 10 mantissa bits on a GPU
        real_radii = radii(real, k, row_block)
        inside = torch.cat([(torch.cdist(b, real) <= real_radii).any(dim=1) for b in fake.split(row_block)])
        nearest = [torch.cdist(b, fake).topk(length, dim=1, largest=False) for b in fake.split(row_block)]
        neighbour_dist = torch.cat([t.values for t in nearest])
        neighbour_index = torch.cat([t.indices for t in nearest])
        del nearest
        fake_radii, outer = neighbour_dist[:, k], neighbour_dist[:, -1]
        counts, pair_real, pair_fake, pair_dist = [], [], [], []
        for start, b in zip(range(0, real.shape[0], row_block), real.split(row_block)):
            dist = torch.cdist(b, fake)
            count = (dist <= fake_radii).sum(dim=1, dtype=torch.int32)
            counts.append(count)
            rows = torch.nonzero(count < COVER_CAP, as_tuple=True)[0]
            if len(rows):
                near = dist if len(rows) == len(dist) else dist[rows]
                row, col = torch.nonzero(near <= outer, as_tuple=True)
                pair_real.append((rows[row] + start).cpu())
                pair_fake.append(col.cpu())
                pair_dist.append(near[row, col].cpu())
        counts = torch.cat(counts)

    def joined(parts, dtype):
        return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype)

    return PrecisionRecallSamples(
        precision=int(inside.sum()) / n_fake,
        recall=int((counts > 0).sum()) / real.shape[0],
        k=k,
        n_real=real.shape[0],
        inside=inside.cpu().numpy(),
        neighbour_index=neighbour_index.cpu().numpy().astype(np.int64),
        neighbour_dist=neighbour_dist.cpu().numpy(),
        always_covered=int((counts >= COVER_CAP).sum()),
        pair_real=joined(pair_real, np.int64),
        pair_fake=joined(pair_fake, np.int64),
        pair_dist=joined(pair_dist, np.float32),
    )


def subset_recall(samples: PrecisionRecallSamples, member: np.ndarray) -> float:
    """Recall of the generated samples in ``member`` alone, their k-NN radii recomputed within the subset.

    A member's radius is the distance to its (k + 1)-th nearest member (itself first), read from its recorded
    neighbour list; if fewer than k + 1 of its listed neighbours are members, the list's last distance (a lower
    bound) is used. Exact for subsets that keep k + 1 listed neighbours of every member.

    Args:
        samples: from ``precision_recall_samples``.
        member: (M,) bool mask of the generated samples in the subset.

    Returns:
        The subset's recall against the full real set.
    """
    member = np.asarray(member, dtype=bool)
    if member.shape != samples.inside.shape:
        raise ValueError(f"member must be ({len(samples.inside)},) bool, got shape {member.shape}")
    reached = np.cumsum(member[samples.neighbour_index], axis=1, dtype=np.int32) >= samples.k + 1
    position = np.where(reached[:, -1], reached.argmax(axis=1), reached.shape[1] - 1)
    radius = np.take_along_axis(samples.neighbour_dist, position[:, None], axis=1)[:, 0]
    hit = member[samples.pair_fake] & (samples.pair_dist <= radius[samples.pair_fake])
    covered = np.count_nonzero(np.bincount(samples.pair_real[hit], minlength=samples.n_real))
    return (samples.always_covered + covered) / samples.n_real


def half_sample_recalls(
    samples: PrecisionRecallSamples, n_resamples: int = RECALL_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """``subset_recall`` of ``n_resamples`` random halves (``M // 2`` samples, without replacement).

    Args:
        samples: from ``precision_recall_samples``.
        n_resamples: number of halves.
        seed: seed of the halves.

    Returns:
        (n_resamples,) float64 recalls.
    """
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n_fake = len(samples.inside)
    recalls = np.empty(n_resamples)
    for r in range(n_resamples):
        member = np.zeros(n_fake, dtype=bool)
        member[rng.choice(n_fake, n_fake // 2, replace=False)] = True
        recalls[r] = subset_recall(samples, member)
    return recalls


def precision_recall_intervals(
    samples: PrecisionRecallSamples, confidence: float = CONFIDENCE, n_resamples: int = RECALL_RESAMPLES, seed: int = 0
) -> dict:
    """Intervals of precision (Wilson) and recall (half-sampling), centred on the observed values.

    Args:
        samples: from ``precision_recall_samples``.
        confidence: two-sided level.
        n_resamples: half-samples for recall.
        seed: seed of the half-samples.

    Returns:
        Dict with ``precision``, ``precision_lo``, ``precision_hi``, ``precision_se``, ``recall``, ``recall_lo``,
        ``recall_hi``, ``recall_se`` (floats; bounds clipped to [0, 1]).
    """
    z = z_score(confidence)
    n_fake = len(samples.inside)
    successes = int(np.count_nonzero(samples.inside))
    precision_lo, precision_hi = wilson_interval(successes, n_fake, confidence)
    recalls = half_sample_recalls(samples, n_resamples, seed)
    half = n_fake // 2
    # Delete-d jackknife variance (Shao & Wu 1989): (N - d) / d x the variance over subsets of size N - d.
    recall_se = math.sqrt(half / (n_fake - half) * float(np.var(recalls, ddof=1)))
    return {
        "precision": samples.precision,
        "precision_lo": precision_lo,
        "precision_hi": precision_hi,
        "precision_se": math.sqrt(samples.precision * (1.0 - samples.precision) / n_fake),
        "recall": samples.recall,
        "recall_lo": max(0.0, samples.recall - z * recall_se),
        "recall_hi": min(1.0, samples.recall + z * recall_se),
        "recall_se": recall_se,
    }
