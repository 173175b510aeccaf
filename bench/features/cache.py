"""The on-disk feature cache: reference and text features computed once per (data identity, extractor id).

Entries are ``<cache_dir>/<sha256 of the key>.npy`` with the key beside it as ``.json`` for humans, both written
atomically (the ``.npy`` last). Any change in any key part is a miss, so a key names everything the features
depend on (in the style of StyleGAN3's ``metric_utils`` cache, keyed by contents rather than paths).
"""

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.features.base import FeatureExtractor, TextImageExtractor
from bench.hashing import canonical_json, sha256_text
from bench.protocol import ReferenceSet
from bench.store import atomic_write_bytes


def cached_features(cache_dir: str | Path, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, cached on disk under the sha256 of a canonical JSON of ``key``.

    Args:
        cache_dir: folder of the cache; created when missing.
        key: JSON-serialisable dict naming everything the array depends on.
        compute: called only on a miss; must return a numpy array.

    Returns:
        The cached or freshly computed array.
    """
    cache_dir = Path(cache_dir)
    digest = sha256_text(canonical_json(key))
    path = cache_dir / f"{digest}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):  # a damaged entry is recomputed, never trusted
            pass
    features = compute()
    if not isinstance(features, np.ndarray):
        raise TypeError(f"compute() must return a numpy array, got {type(features).__name__}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    key_json = json.dumps(key, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(cache_dir / f"{digest}.json", lambda f: f.write(key_json.encode("utf-8")))
    atomic_write_bytes(path, lambda f: np.save(f, features, allow_pickle=False))
    return features


def batched_features(batches: Iterable, total: int, fn: Callable, desc: str) -> np.ndarray:
    parts = []
    with tqdm(total=total, desc=desc, unit="item") as bar:
        for batch in batches:
            parts.append(np.asarray(fn(batch), dtype=np.float32))
            bar.update(len(batch))
    features = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if len(features) != total:
        raise ValueError(f"{desc}: got {len(features)} feature rows, expected {total}")
    return features


def reference_features(reference: ReferenceSet, extractor: FeatureExtractor, cache_dir: str | Path,
                       batch_size: int = 256) -> np.ndarray:
    """Image features of a protocol's reference set, cached; float32 (reference.count, D).

    Keyed by the reference identity and count and the extractor id (not the batch size: features do not depend
    on it beyond float rounding on a GPU).
    """
    key = {"kind": "reference-image-features", "reference": reference.identity, "count": reference.count,
           "extractor": extractor.id}

    def compute():
        return batched_features(reference.load_batches(batch_size), reference.count, extractor.image_features,
                                "reference features")

    return cached_features(cache_dir, key, compute)


def text_features_cached(texts: list[str], extractor: TextImageExtractor, cache_dir: str | Path,
                         batch_size: int = 256) -> np.ndarray:
    """``extractor.text_features(texts)``, cached under a hash of the exact strings and the extractor id."""
    texts = list(texts)
    key = {"kind": "text-features", "texts_sha256": sha256_text(canonical_json(texts)), "count": len(texts),
           "extractor": extractor.id}
    batches = (texts[i : i + batch_size] for i in range(0, len(texts), batch_size))
    return cached_features(
        cache_dir, key, lambda: batched_features(batches, len(texts), extractor.text_features, "text features"))
