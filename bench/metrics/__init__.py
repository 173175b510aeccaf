"""Pure metric functions on feature arrays: no I/O, no model loading, no device defaults that assume CUDA.

- ``fid``: Fréchet distance (clean-fid / torch-fidelity numerics, float64, imaginary parts never dropped silently).
- ``prdc``: improved precision and recall (Kynkäänniemi et al. 2019), blocked so memory stays bounded.
- ``clipscore``: raw cosine CLIP score of matched image/text pairs (GigaGAN, DMD2, SwiftBrush v2 convention).
- ``kid``: kernel inception distance with seeded, reproducible subsets.
"""

from bench.metrics.clipscore import clip_score, clip_scores
from bench.metrics.fid import SmallSampleWarning, feature_statistics, fid_from_features, frechet_distance
from bench.metrics.kid import kid_from_features
from bench.metrics.prdc import precision_recall

__all__ = [
    "SmallSampleWarning",
    "clip_score",
    "clip_scores",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "kid_from_features",
    "precision_recall",
]
