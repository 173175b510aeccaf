"""open_clip image and text embeddings: the CLIP score of SwiftBrush v2, GigaGAN and DMD2 (ViT-g-14,
``laion2b_s12b_b42k``) or any open_clip model.

Weights are never fetched silently from an unexpected place: see ``resolve_clip_weights``.
"""

import difflib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError
from bench.features.base import TextImageExtractor, check_images, first_line, forward_batches, weights_dir
from bench.hashing import file_sha256, sha256_text
from bench.protocol import CLIP_PREFIX

CLIP_MODEL = "ViT-g-14"
CLIP_PRETRAINED = "laion2b_s12b_b42k"
CLIP_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# open_clip applies a tag's preprocessing only when `pretrained` is the tag; we pass a file, so we pass these too.
_TAG_PREPROCESS = {
    "image_mean": "mean",
    "image_std": "std",
    "image_interpolation": "interpolation",
    "image_resize_mode": "resize_mode",
}


def clip_text(caption: str, prefix: str = CLIP_PREFIX) -> str:
    """The string whose embedding is scored against an image: ``prefix + caption``.

    ``ClipExtractor.text_features`` encodes exactly what it is given; the caller applies the protocol's
    ``clip_prefix`` with this helper (SwiftBrush v2 / GigaGAN / DMD2 use ``"A photo depicts "``).
    """
    return prefix + caption


def clip_weights_names(model: str, tag: str) -> tuple[str, str]:
    """File names looked up in ``$BENCH_WEIGHTS_DIR``, e.g. ``open_clip_ViT-g-14_laion2b_s12b_b42k.safetensors``
    then ``....bin``: the tag's ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``, renamed."""
    stem = f"open_clip_{model}_{tag}"
    return f"{stem}.safetensors", f"{stem}.bin"


def _missing_clip(model: str, tag: str | None, detail: str) -> UserError:
    import open_clip

    name = clip_weights_names(model, tag)[1] if tag else f"open_clip_{model}_<tag>.bin"
    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "").strip("/") if tag else ""
    source = f" (download: https://huggingface.co/{hub})" if hub else ""
    return UserError(
        f"open_clip weights for {model}/{tag or 'file'} {detail}: pass --clip-weights FILE or put {name} "
        f"in $BENCH_WEIGHTS_DIR{source}"
    )


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".bin", ".pt", ".pth", ".safetensors"))


def resolve_clip_weights(
    model: str = CLIP_MODEL, pretrained: str | None = CLIP_PRETRAINED, weights: str | Path | None = None
) -> tuple[Path, str | None]:
    """Find open_clip weights, in this order:

    1. ``weights`` (the CLI's ``--clip-weights FILE``), or ``pretrained`` when it is a file path; must exist;
    2. ``$BENCH_WEIGHTS_DIR/open_clip_<model>_<tag>.safetensors`` or ``.bin`` (see ``clip_weights_names``);
    3. open_clip's own download for the tag (its Hugging Face cache), when online or already cached.

    Returns:
        ``(path, tag)``; ``tag`` is None when only a file was given.

    Raises:
        UserError: unknown model or tag, or no weights found (one line naming the option and the variable).
    """
    import open_clip

    if open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
        raise UserError(f"unknown open_clip model {model!r}; close matches: {close} (see open_clip.list_models())")
    tag = pretrained
    is_tag = tag is not None and bool(open_clip.get_pretrained_cfg(model, tag))
    if tag is not None and not is_tag and (Path(tag).expanduser().is_file() or _looks_like_path(tag)):
        weights, tag = weights or tag, None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise _missing_clip(model, tag, f"not found at {path}")
        return path, tag
    if tag is None:
        raise _missing_clip(model, tag, "not given")
    if not is_tag:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise UserError(
            f"unknown open_clip pretrained tag {tag!r} for {model}; known: {tags}, or pass --clip-weights FILE"
        )
    env_dir = weights_dir()
    for name in clip_weights_names(model, tag) if env_dir is not None else ():
        if (env_dir / name).is_file():
            return env_dir / name, tag
    try:
        return Path(open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(model, tag))), tag
    except Exception as error:
        raise _missing_clip(model, tag, f"not found and download failed ({first_line(error)})") from None


class ClipExtractor(TextImageExtractor):
    """open_clip image and text embeddings (float32, unnormalised; ``bench.metrics.clipscore`` normalises).

    Images: uint8 NHWC at the metric resolution (256 px for COCO) -> PIL -> open_clip's validation transform
    (the third value of ``create_model_and_transforms``) -> ``encode_image``. Texts: encoded exactly as given.

    Args:
        model: any open_clip model name (default ``ViT-g-14``).
        pretrained: an open_clip tag (default ``laion2b_s12b_b42k``) or a local checkpoint file. A tag also
            sets the preprocessing and QuickGELU as open_clip does for that tag, even when ``weights`` is given.
        weights: a local checkpoint file (the CLI's ``--clip-weights FILE``); see ``resolve_clip_weights``.
        device: torch device, ``"cpu"`` by default.
        batch_size: images or texts per forward.
        allow_tf32: allow TF32 on CUDA (off by default; recorded in ``id``).
        precision: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``: the dtype of the weights and the image input
            (features are returned as float32 whatever it is); a precision other than fp32 is recorded in ``id``.
    """

    def __init__(
        self,
        model: str = CLIP_MODEL,
        pretrained: str | None = CLIP_PRETRAINED,
        weights=None,
        device: str = "cpu",
        batch_size: int = 64,
        allow_tf32: bool = False,
        precision: str = "fp32",
    ):
        import open_clip

        path, tag = resolve_clip_weights(model, pretrained, weights)
        cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
        overrides = {argument: cfg[name] for argument, name in _TAG_PREPROCESS.items() if name in cfg}
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model,
                pretrained=str(path),
                precision="fp32",
                device="cpu",
                force_quick_gelu=cfg.get("quick_gelu", False),
                **overrides,
            )
            tokenizer = open_clip.get_tokenizer(model)
        except Exception as error:
            raise _missing_clip(model, tag, f"at {path} could not be loaded ({first_line(error)})") from None
        weights_id = f"open_clip-{open_clip.__version__}/{model}/{tag or 'file'}/sha256={file_sha256(path)}"
        self._setup(clip, preprocess, tokenizer, weights_id, device, batch_size, allow_tf32, precision)

    @classmethod
    def from_components(
        cls,
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        id: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        allow_tf32: bool = False,
        precision: str = "fp32",
    ) -> "ClipExtractor":
        """Wrap an already-built open_clip ``(model, preprocess, tokenizer)`` (tests, the demo world).

        ``id`` defaults to a sha256 of the model's state dict, so different weights never share a cache entry.
        """
        if id is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            id = f"open_clip/{type(model).__name__}/state_dict-sha256={digest.hexdigest()}"
        self = cls.__new__(cls)
        self._setup(model, preprocess, tokenizer, id, device, batch_size, allow_tf32, precision)
        return self

    def _setup(self, model, preprocess, tokenizer, weights_id, device, batch_size, allow_tf32, precision) -> None:
        if precision not in CLIP_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(CLIP_PRECISIONS)}, got {precision!r}")
        self.device, self.dtype, self.precision = torch.device(device), CLIP_PRECISIONS[precision], precision
        self.model = model.to(self.device, self.dtype).eval()
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.batch_size, self.allow_tf32 = batch_size, allow_tf32
        transform = sha256_text(repr(preprocess))[:16]
        self.id = f"clip/{weights_id}/preprocess-sha256={transform}/tf32={int(allow_tf32)}"
        if precision != "fp32":  # fp32 ids stay as they were, so existing caches remain valid
            self.id += f"/precision={precision}"

    def image_features(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        def encode(batch):
            return self.model.encode_image(
                torch.stack([self.preprocess(Image.fromarray(im)) for im in batch]).to(self.device, self.dtype)
            )

        return forward_batches(check_images(images), self.batch_size, encode, self.allow_tf32)

    def text_features(self, texts: list[str]) -> np.ndarray:
        def encode(batch):
            return self.model.encode_text(self.tokenizer(list(batch)).to(self.device))

        return forward_batches(list(texts), self.batch_size, encode, self.allow_tf32)

