"""The HPS v2 / v2.1 reward model: open_clip ViT-H-14 with the HPS weights, image and text embeddings for
``bench.metrics.hps``.

Follows the ``hpsv2`` package (1.2.0 = tgxs002/HPSv2 commit 866735e): the model is ``ViT-H-14`` created without
pretrained weights, then loaded with the checkpoint's ``state_dict`` (``evaluation.py``); images go through
``preprocess_val`` with light augmentation (``transform.py``): to a tensor in [0, 1], bicubic resize of the longer
side to 224 on the tensor, centred zero padding to 224 x 224, OpenAI mean/std; prompts through open_clip's tokenizer.
The tensor resize's antialiasing is torchvision's default, which changed in torchvision 0.17 (on) from off: here it
is explicit and recorded in the extractor id. hpsv2 runs the forward under fp16 autocast on a GPU ("amp").
"""

from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError
from bench.features.base import TextImageExtractor, first_line, forward_batches, weights_dir
from bench.hashing import file_sha256

MODEL = "ViT-H-14"
FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
WEIGHTS_URL = "https://huggingface.co/xswu/HPSv2"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 224


def missing_weights(detail: str) -> UserError:
    return UserError(f"HPS weights {detail}: pass --hps-weights FILE ({FILES['v2.0']} for HPS v2, {FILES['v2.1']} "
                     f"for v2.1, published at {WEIGHTS_URL}) or put one in $BENCH_WEIGHTS_DIR")


def resolve_weights(weights: str | Path | None) -> Path:
    """``--hps-weights FILE``, else the first published file name found in ``$BENCH_WEIGHTS_DIR``."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise missing_weights(f"not found at {path}")
        return path
    folder = weights_dir()
    for name in FILES.values() if folder is not None else ():
        if (folder / name).is_file():
            return folder / name
    raise missing_weights("not given")


def version_of(path: Path) -> str:
    """``v2.0`` / ``v2.1`` from the published file names, else ``file``."""
    return next((version for version, name in FILES.items() if path.name == name), "file")


def load_state_dict(path: Path) -> dict:
    """The checkpoint's model tensors without running pickled code: safetensors, or ``torch.load(weights_only=True)``
    of the published ``{"state_dict": ..., ...}`` dict (a bare state dict is accepted too)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"no state dict inside (got {type(checkpoint).__name__})")
    return state


def preprocess(images: np.ndarray, antialias: bool = True, size: int = SIZE) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, size, size) as hpsv2's ``preprocess_val``: [0, 1], bicubic resize of
    the longer side to ``size``, centred zero padding, OpenAI normalisation."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
    height, width = x.shape[-2:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new = [round(height * scale), round(width * scale)]
        x = F.resize(x, new, InterpolationMode.BICUBIC, antialias=antialias)
        pad_h, pad_w = size - new[0], size - new[1]
        x = F.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(x, OPENAI_MEAN, OPENAI_STD)


class HpsExtractor(TextImageExtractor):
    """HPS image and prompt embeddings (unnormalised; ``bench.metrics.hps`` normalises).

    Args:
        weights: the HPS checkpoint (``--hps-weights FILE``); see ``resolve_weights``.
        model: the open_clip architecture (``ViT-H-14``; tests register a tiny one).
        device, batch_size, allow_tf32: as ``ClipExtractor``.
        precision: ``"amp"`` (hpsv2's: fp16 autocast on a GPU, fp32 on a CPU) or ``"fp32"``.
        antialias: the tensor resize's antialiasing (torchvision >= 0.17's default), recorded in ``id``.
    """

    def __init__(self, weights=None, model: str = MODEL, device: str = "cpu", batch_size: int = 32,
                 allow_tf32: bool = False, precision: str = "amp", antialias: bool = True):
        import open_clip

        if precision not in ("amp", "fp32"):
            raise ValueError(f"precision must be 'amp' or 'fp32', got {precision!r}")
        path = resolve_weights(weights)
        try:
            clip = open_clip.create_model(model, pretrained=None, precision="fp32", device="cpu")
            clip.load_state_dict(load_state_dict(path), strict=True)
        except Exception as error:
            raise missing_weights(f"at {path} could not be loaded ({first_line(error)})") from None
        self.model = clip.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model)
        self.device, self.batch_size, self.allow_tf32 = torch.device(device), batch_size, allow_tf32
        self.precision, self.antialias = precision, antialias
        self.version = version_of(path)
        self.id = (f"hps-{self.version}/{model}/sha256={file_sha256(path)}/open_clip-{open_clip.__version__}/"
                   f"resizemax{SIZE}-bicubic-aa{int(antialias)}/{precision}/tf32={int(allow_tf32)}")

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16,
                              enabled=self.precision == "amp" and self.device.type == "cuda")

    def image_features(self, images: np.ndarray) -> np.ndarray:
        def encode(batch):
            with self._autocast():
                return self.model.encode_image(preprocess(batch, self.antialias).to(self.device))

        return forward_batches(np.asarray(images), self.batch_size, encode, self.allow_tf32)

    def text_features(self, texts: list[str]) -> np.ndarray:
        def encode(batch):
            with self._autocast():
                return self.model.encode_text(self.tokenizer(list(batch)).to(self.device))

        return forward_batches(list(texts), self.batch_size, encode, self.allow_tf32)
