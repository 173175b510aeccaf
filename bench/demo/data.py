"""The handwritten digits of scikit-learn (1,797 images of 8x8, 10 classes) as the demo world's data set.

Pixels run 0..16 in ``load_digits``. The models see ``x / 16 * 2 - 1`` in [-1, 1]; the project's images
(uint8 NHWC RGB) are the gray digit repeated over three channels, ``round(x / 16 * 255)``.
"""

from functools import lru_cache

import numpy as np
import torch

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPTS = tuple(f"a handwritten digit {name}" for name in CLASS_NAMES)
EMPTY_PROMPT = ""  # the unconditional prompt of classifier-free guidance, as in Stable Diffusion
RESOLUTION = 8


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (1797, 8, 8) in [-1, 1], labels int64 (1797,))."""
    images, labels = _digits()
    return images / 16 * 2 - 1, labels.copy()


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8, 3) RGB, the gray digit repeated, labels int64 (1797,))."""
    images, labels = _digits()
    gray = np.round(images / 16 * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), labels.copy()


def split(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, stratified (train indices, test indices) split of the 1,797 digits."""
    _, labels = _digits()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def prompts_for(labels) -> list[str]:
    """The prompt of each class label; label 10 (or any value outside 0..9) is the empty prompt."""
    return [PROMPTS[int(c)] if 0 <= int(c) < 10 else EMPTY_PROMPT for c in labels]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model images in [-1, 1], NCHW with 1 or 3 channels -> uint8 NHWC RGB (the image boundary: clamp here)."""
    x = x.detach().float().clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC RGB -> float32 NCHW in [0, 1] (the input convention of the demo extractors' towers)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC RGB images, got dtype {images.dtype} and shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
