"""Per-prompt diversity: mean pairwise distance between the K samples a model draws for one prompt with K seeds.

A model that ignores its noise draws K identical images per prompt and scores 0; more sample variety per prompt
scores higher. Conventions, one per feature kind:

- ``"cosine"`` for CLIP image embeddings: ``1 - cos``, the distance CLIP's similarity implies (DreamSim-style
  and CLIP-based diversity scores use it), computed as ``|u - v|^2 / 2`` on unit vectors so that identical
  embeddings give exactly 0;
- ``"euclidean"`` for Inception features: the distance FID and precision/recall use in that space.

The interval is a percentile bootstrap over prompts (prompts are independent; each prompt's value already
carries its seed-to-seed noise), seeded like every other resampling in ``bench.metrics``.
"""

import itertools

import numpy as np

CONFIDENCE = 0.95
DIVERSITY_RESAMPLES = 2000  # bootstrap resamples of the prompts: cheap, and enough for stable 2.5% percentiles
DISTANCES = ("cosine", "euclidean")
FEATURE_DISTANCE = {"clip": "cosine", "inception": "euclidean"}


def per_prompt_diversity(features: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """Mean distance over the ``K (K - 1) / 2`` pairs of samples of each prompt.

    Args:
        features: (P, K, D) features of K samples (seeds) for each of P prompts, K >= 2.
        distance: ``"cosine"`` (``1 - cos``) or ``"euclidean"``.

    Returns:
        (P,) float64 mean pairwise distances, 0 for a prompt whose K samples are identical.

    Raises:
        ValueError: on a bad shape or distance name, or an all-zero vector under the cosine distance.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 3 or features.shape[1] < 2 or features.shape[0] < 1:
        raise ValueError(f"features must be (P, K, D) with K >= 2, got shape {features.shape}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if distance == "cosine":
        norms = np.linalg.norm(features, axis=2, keepdims=True)
        if not np.all(norms > 0):
            raise ValueError(f"{int(np.sum(norms == 0))} all-zero feature vector(s): cosine distance is undefined")
        features = features / norms
    k = features.shape[1]
    total = np.zeros(features.shape[0])
    for i, j in itertools.combinations(range(k), 2):
        gap = features[:, i] - features[:, j]
        squared = np.einsum("pd,pd->p", gap, gap)
        total += squared / 2.0 if distance == "cosine" else np.sqrt(squared)
    return total / (k * (k - 1) / 2)


def diversity(
    features: np.ndarray,
    distance: str = "cosine",
    confidence: float = CONFIDENCE,
    n_resamples: int = DIVERSITY_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Mean per-prompt diversity over P prompts, with a bootstrap-over-prompts percentile interval.

    Args:
        features: (P, K, D) features, K seeds per prompt (see ``per_prompt_diversity``).
        distance: ``"cosine"`` or ``"euclidean"``.
        confidence: two-sided level.
        n_resamples: bootstrap resamples of the P prompts (with replacement).
        seed: seed of the resamples.

    Returns:
        Dict with ``diversity`` (mean over prompts), ``diversity_lo``, ``diversity_hi`` (floats) and
        ``per_prompt`` ((P,) array, in prompt order, for the least and most diverse prompts).

    Raises:
        ValueError: as ``per_prompt_diversity``, or on a bad ``confidence`` or ``n_resamples``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    values = per_prompt_diversity(features, distance)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return {"diversity": float(values.mean()), "diversity_lo": float(lo), "diversity_hi": float(hi),
            "per_prompt": values}


def diversity_columns(
    clip: np.ndarray | None = None,
    inception: np.ndarray | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = DIVERSITY_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Table columns for the features given: cosine diversity of CLIP embeddings, Euclidean of Inception features.

    Args:
        clip: (P, K, D) CLIP image embeddings, or None.
        inception: (P, K, D) Inception (FID) features, or None.
        confidence: two-sided level.
        n_resamples: bootstrap resamples of the prompts.
        seed: seed of the resamples (the same prompt resamples for both kinds).

    Returns:
        Dict with ``diversity_clip``, ``diversity_clip_lo``, ``diversity_clip_hi`` and/or ``diversity_inception``,
        ``diversity_inception_lo``, ``diversity_inception_hi`` (floats), and ``diversity_clip_per_prompt`` /
        ``diversity_inception_per_prompt`` ((P,) arrays).
    """
    columns = {}
    for kind, features in (("clip", clip), ("inception", inception)):
        if features is None:
            continue
        result = diversity(features, FEATURE_DISTANCE[kind], confidence, n_resamples, seed)
        columns.update({key.replace("diversity", f"diversity_{kind}"): value for key, value in result.items()
                        if key != "per_prompt"})
        columns[f"diversity_{kind}_per_prompt"] = result["per_prompt"]
    return columns
