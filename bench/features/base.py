"""The extractor contract: uint8 NHWC RGB images at the protocol's metric resolution in, float32 (N, D) out.

Every extractor owns its preprocessing and weights, and its ``id`` names both (weights digest, preprocessing,
precision, TF32), so that cached features never go stale.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.tf32 import tf32


class FeatureExtractor:
    id: str  # stable; includes the sha256 of the weights file and the preprocessing

    def image_features(self, images: np.ndarray) -> np.ndarray:  # float32 (N, D)
        raise NotImplementedError


class TextImageExtractor(FeatureExtractor):
    def text_features(self, texts: list[str]) -> np.ndarray:  # float32 (N, D)
        raise NotImplementedError


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3) RGB, got {images.dtype} {images.shape}")
    return images


def forward_batches(items, batch_size: int, forward: Callable, allow_tf32: bool) -> np.ndarray:
    """``forward`` over ``items`` in batches, under inference mode and the extractor's TF32 choice, as float32."""
    parts = []
    for start in range(0, len(items), batch_size):
        with torch.inference_mode(), tf32(allow_tf32):
            parts.append(forward(items[start : start + batch_size]).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def package_version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # a vendored copy; the weights' sha256 still pins the model
        return "unknown"


def weights_dir() -> Path | None:
    """``$BENCH_WEIGHTS_DIR``: where the CLIs look for weight files not given by an option."""
    value = os.environ.get("BENCH_WEIGHTS_DIR")
    return Path(value).expanduser() if value else None
