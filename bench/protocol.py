"""Evaluation protocols: the prompts to generate, the reference images, the image preprocessing.

COCO-2014 30K as SwiftBrush v2 / GigaGAN / DMD2 evaluate it (``reference/paper.md`` section 2).
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceSet:
    identity: str  # hash of the file list (names + sizes) or of the array bytes
    count: int
    load_batches: Callable[[int], Iterator[np.ndarray]]  # batch_size -> uint8 NHWC at metric resolution


@dataclass(frozen=True)
class Protocol:
    name: str  # "coco2014-30k-sbv2", "demo-digits"
    captions: tuple[str, ...]  # prompt of sample i
    caption_ids: tuple[str, ...]  # where each caption came from (COCO image id, file name, class)
    metric_resolution: int  # 256 for COCO, 8 for the demo
    resize: str  # names the preprocessing in hashes and outputs, e.g. "center-crop+lanczos"
    clip_prefix: str  # "A photo depicts " for COCO
    reference: ReferenceSet
    to_metric_images: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC of any size -> metric resolution

    def hash(self) -> str:
        payload = json.dumps(
            [self.name, list(self.captions), list(self.caption_ids), self.metric_resolution, self.resize,
             self.clip_prefix, self.reference.identity, self.reference.count]
        )
        return hashlib.sha256(payload.encode()).hexdigest()
