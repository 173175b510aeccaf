"""The demo protocol: ten digit prompts, interleaved, against all 1,797 real digits at 8x8."""

import hashlib
from collections.abc import Iterator

import numpy as np

from bench.demo.data import PROMPTS, RESOLUTION, digits_uint8
from bench.protocol import Protocol, ReferenceSet


def to_metric_images(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> 8x8: the identity at 8x8; other sizes are resized with PIL LANCZOS per image."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC RGB images, got dtype {images.dtype} and shape {images.shape}")
    if images.shape[1:3] == (RESOLUTION, RESOLUTION):
        return images
    from PIL import Image

    size = (RESOLUTION, RESOLUTION)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.LANCZOS)) for im in images])


def reference_set() -> ReferenceSet:
    images, _ = digits_uint8()
    identity = hashlib.sha256(images.tobytes()).hexdigest()

    def load_batches(batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]

    return ReferenceSet(identity=identity, count=len(images), load_batches=load_batches)


def demo_protocol(samples_per_prompt: int = 180) -> Protocol:
    """``samples_per_prompt * 10`` samples; sample i prompts class ``i % 10``, so any prefix is balanced."""
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
    n = 10 * samples_per_prompt
    return Protocol(
        name="demo-digits",
        captions=tuple(PROMPTS[i % 10] for i in range(n)),
        caption_ids=tuple(f"class-{i % 10}" for i in range(n)),
        metric_resolution=RESOLUTION,
        resize="none",
        clip_prefix="",
        reference=reference_set(),
        to_metric_images=to_metric_images,
    )
