"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models"), computed in row blocks so memory stays bounded.

Same definition and numerics as ``torch_fidelity.metric_prc`` (torch-fidelity 0.4.0, after its
precision/recall swap fix #70); same definition as the ADM evaluator's ``ManifoldEstimator`` (which compares
squared distances: same ordering):

- the radius of a point is the Euclidean distance to its k-th nearest neighbour in its own set, not counting
  itself (``kthvalue(k + 1)`` over distances that include the zero self-distance; duplicates count);
- a fake sample counts toward precision when ``d(fake, real_j) <= radius(real_j)`` for some real point j;
  recall is the same with the sets swapped.

Distances are float32 ``torch.cdist`` like torch-fidelity (the ADM evaluator also uses float32; NVIDIA's
StyleGAN2-ADA port uses float16), with TF32 off on a GPU.

Memory: the inputs plus one ``row_block x N`` block at a time, never an N x M matrix (measured peaks:
``docs/metrics.md``).
"""

import numpy as np
import torch

from bench.tf32 import tf32

ROW_BLOCK = 1024  # 1024 x 40,504 x 4 B = 166 MB per block; torch.cdist also copies the column set once per call


def as_tensors(real, fake, k: int, row_block: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets as float32 tensors on ``device``, checked: matching (N, D) and (M, D), more than ``k``
    samples each, a positive ``row_block``."""
    device = torch.device(device if device is not None else "cpu")

    def tensor(features):
        if not torch.is_tensor(features):
            features = torch.from_numpy(np.ascontiguousarray(features))
        return features.to(device=device, dtype=torch.float32)

    real, fake = tensor(real), tensor(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(
            f"k = {k} needs more than {k} samples per set, got {real.shape[0]} real, {fake.shape[0]} fake"
        )
    if row_block < 1:
        raise ValueError(f"row_block must be positive, got {row_block}")
    return real, fake


def radii(points: torch.Tensor, k: int, row_block: int) -> torch.Tensor:
    # The (k + 1)-th smallest distance, because each point's zero distance to itself is the first. topk gives the
    # same value as torch-fidelity's kthvalue(k + 1) (an order statistic does not depend on tie order), and on
    # the CPU kthvalue clones its input and allocates int64 indices of the same size: 5x the block's memory.
    radii = [torch.cdist(b, points).topk(k + 1, dim=1, largest=False).values[:, k] for b in points.split(row_block)]
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, row_block: int) -> float:
    inside = sum(int((torch.cdist(block, centres) <= radii).any(dim=1).sum()) for block in queries.split(row_block))
    return inside / queries.shape[0]


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    row_block: int = ROW_BLOCK,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real``.

    Args:
        real: (N, D) reference features (e.g. 40,504 COCO val2014 images).
        fake: (M, D) generated features (e.g. 30,000 samples).
        k: neighbourhood size of the k-NN radii (3 in the paper, the ADM evaluator and SwiftBrush v2).
        row_block: rows per distance block; peak extra memory is about ``2 x row_block x max(N, M) x 4`` bytes.
            The result does not depend on it.
        device: torch device for the distance blocks, e.g. ``"cuda"``; default CPU.

    Returns:
        ``(precision, recall)``: the fraction of fake samples inside the real manifold, and the fraction of
        real samples inside the fake manifold.

    Raises:
        ValueError: on mismatched shapes, or fewer than ``k + 1`` samples in a set.
    """
    real, fake = as_tensors(real, fake, k, row_block, device)
    with torch.inference_mode(), tf32(False):  # TF32 would round distances to 10 mantissa bits on a GPU
        precision = _coverage(fake, real, radii(real, k, row_block), row_block)
        recall = _coverage(real, fake, radii(fake, k, row_block), row_block)
    return precision, recall
