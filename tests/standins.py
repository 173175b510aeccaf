"""Stand-in feature extractors for end-to-end tests: deterministic, weight-free, fast.

Images and texts land in one 12-d space (colour statistics vs a hash of the words), enough for
FID, precision/recall and a CLIP-like score to be computed through the real run machinery.
"""

import hashlib

import numpy as np

from bench.features import FeatureExtractor, TextImageExtractor


def _image_stats(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    small = x.reshape(len(x), 4, x.shape[1] // 4, 4, x.shape[2] // 4, 3).mean(axis=(2, 4))  # 4x4 colour grid
    return np.concatenate([small.reshape(len(x), -1)[:, :9], x.std(axis=(1, 2))], axis=1).astype(np.float32)


class PixelStats(FeatureExtractor):
    def __init__(self, device="cpu", **_):
        self.id = "test-pixel-stats-v1"

    def image_features(self, images):
        return _image_stats(images)


class HashedText(TextImageExtractor):
    def __init__(self, device="cpu", **_):
        self.id = "test-hashed-text-v1"

    def image_features(self, images):
        return _image_stats(images) - 0.5

    def text_features(self, texts):
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:12], dtype=np.uint8) for t in texts]
        return (np.stack(rows).astype(np.float32) / 255.0) - 0.5
