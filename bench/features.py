"""Feature extractors (Inception, CLIP, and the demo world's) and the on-disk feature cache.

Every extractor takes uint8 NHWC RGB images at the protocol's metric resolution and owns its own
preprocessing and weights; its ``id`` names both, so that cached features never go stale.
"""

from collections.abc import Callable

import numpy as np


class FeatureExtractor:
    id: str  # stable; includes the sha256 of the weights file and the preprocessing

    def image_features(self, images: np.ndarray) -> np.ndarray:  # float32 (N, D)
        raise NotImplementedError


class TextImageExtractor(FeatureExtractor):
    def text_features(self, texts: list[str]) -> np.ndarray:  # float32 (N, D)
        raise NotImplementedError


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    if name in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is already registered")
    EXTRACTORS[name] = factory
