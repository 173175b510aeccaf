"""Human Preference Score v2 (Wu et al. 2023, "Human Preference Score v2"), as its benchmark computes it.

Follows the ``hpsv2`` package's own scoring code (PyPI hpsv2 1.2.0 = tgxs002/HPSv2 commit 866735e,
``hpsv2/evaluation.py``): the score of an image is ``100 * cos(image embedding, prompt embedding)`` (the model's
``logit_scale`` is not used), a style's score is the mean of the means of consecutive 80-prompt chunks (the plain
mean when the prompt count is a multiple of 80, as the benchmark's 800 per style are), and "average" is the plain
mean over every image of every style.
"""

import numpy as np

SCALE = 100.0
CHUNK = 80


def hps_scores(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Per-pair HPS: ``100 * <img_i / |img_i|, txt_i / |txt_i|>`` in float64, row i of one with row i of the other.

    Raises:
        ValueError: on mismatched shapes.
    """
    image = np.asarray(image_features, dtype=np.float64)
    text = np.asarray(text_features, dtype=np.float64)
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"features must both be (N, D), got {image.shape} and {text.shape}")
    image = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return SCALE * np.einsum("nd,nd->n", image, text)


def style_score(scores: np.ndarray) -> float:
    """One style's score: the mean of the 80-prompt chunk means, in prompt order."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean([scores[i:i + CHUNK].mean() for i in range(0, len(scores), CHUNK)]))


def benchmark_scores(scores: np.ndarray, styles: np.ndarray) -> dict[str, float]:
    """``{style: score, ..., "average": mean of every score}``; ``styles[i]`` names the style of ``scores[i]``,
    which are in prompt order within each style."""
    scores, styles = np.asarray(scores, dtype=np.float64), np.asarray(styles)
    result = {style: style_score(scores[styles == style]) for style in dict.fromkeys(styles.tolist())}
    result["average"] = float(scores.mean())
    return result
