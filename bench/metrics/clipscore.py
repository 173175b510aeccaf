"""CLIP score as SwiftBrush v2, GigaGAN and DMD2 report it: the mean cosine similarity of matched
image/caption embedding pairs, as a raw cosine (about 0.33 on COCO), not x100 and not clamped.

Reference: SwiftBrush v2 ``eval/clip_score.py`` (``F.cosine_similarity`` of open_clip ViT-g-14 embeddings,
text ``"A photo depicts " + caption``). torchmetrics' ``CLIPScore`` differs: it multiplies by 100 and clamps
the mean at 0. The prefix is the caller's job (``bench.features.clip_text``).
"""

import numpy as np


def clip_scores(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of row i of ``image_features`` with row i of ``text_features``.

    Args:
        image_features: (N, D) image embeddings (unnormalised is fine).
        text_features: (N, D) text embeddings of the matching captions.

    Returns:
        (N,) float64 cosines in [-1, 1].

    Raises:
        ValueError: on mismatched shapes, or an all-zero embedding (its cosine is undefined).
    """
    image = np.asarray(image_features, dtype=np.float64)
    text = np.asarray(text_features, dtype=np.float64)
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"features must both be (N, D), got {image.shape} and {text.shape}")
    norms = np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1)
    if not np.all(norms > 0):
        raise ValueError(f"{int(np.sum(norms == 0))} embedding pair(s) contain an all-zero vector")
    return np.einsum("nd,nd->n", image, text) / norms


def clip_score(image_features: np.ndarray, text_features: np.ndarray) -> float:
    """Mean of ``clip_scores``: the reported CLIP score (raw cosine, e.g. 0.33)."""
    return float(np.mean(clip_scores(image_features, text_features)))
