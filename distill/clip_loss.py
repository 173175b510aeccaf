"""SwiftBrush v2's clamped CLIP loss, differentiable from the student's latent to the CLIP image tower.

    L = max(0, tau - cos(E_img(D(x0)), E_txt(y))),   tau = 0.35        (arXiv 2408.14176, Sec. 4.2)

per sample, averaged over the batch; the weight goes from 0.1 to 0 over training (the paper says
"gradually reduced to zero"; linear here by default, cosine as an option). E_img is open_clip
ViT-B-32 by default; D is TAESD (``diffusers.AutoencoderTiny``, scaling factor 1: the student's x0
is already in SD latent space and goes in unscaled) or the teacher folder's own VAE (x0 / its scaling
factor). The unofficial re-implementation (gudaochangsheng/SwiftBrushV2) detaches the decoded image,
round-trips it through uint8 and runs CLIP under ``no_grad``, so its CLIP term has no gradient; here
decoding, resizing and the CLIP normalisation are torch operations on the graph.

Pluggable: any ``encode_image(images in [0, 1], NCHW) -> (N, D)`` callable and precomputed text
embeddings work, e.g. the demo world's contrastive model (``encode_image`` / ``encode_text``).
"""

import importlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.errors import UserError

TAU = 0.35
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clamped_clip_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                      tau: float = TAU) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_i max(0, tau - cos_i)`` and the per-sample cosines (samples above tau give no gradient)."""
    cos = F.cosine_similarity(image_embeddings.float(), text_embeddings.float().to(image_embeddings.device), dim=-1)
    return F.relu(tau - cos).mean(), cos


def clip_weight(step: int, total_steps: int, start: float = 0.1, end: float = 0.0, schedule: str = "linear") -> float:
    """The CLIP-loss weight at ``step`` of ``total_steps``: ``start`` at 0, ``end`` at the last step."""
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"clip weight schedule must be 'linear' or 'cosine', got {schedule!r}")


def decode_to_unit(decoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images in about [0, 1] from latents in SD latent space, differentiably (no clamp, no detach).

    ``latents / decoder.config.scaling_factor`` suits AutoencoderKL (0.18215), TAESD and the demo's
    pixel autoencoder (both 1.0); diffusers decoders return [-1, 1].
    """
    scaling = getattr(decoder.config, "scaling_factor", None) or 1.0
    out = decoder.decode(latents.to(decoder.dtype) / scaling)
    images = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out
    return (images.float() + 1) / 2


def clip_preprocess(images: torch.Tensor, size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """open_clip's preprocessing in torch: bicubic resize of the short side, centre crop, normalise."""
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    if (height, width) != (size, size):
        new = (max(size, round(height * scale)), max(size, round(width * scale)))
        images = F.interpolate(images, size=new, mode="bicubic", align_corners=False, antialias=scale < 1)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        images = images[..., top:top + size, left:left + size]
    mean = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


class OpenClipEncoder(torch.nn.Module):
    """A frozen open_clip model behind the pluggable interface: ``encode_image`` / ``encode_text``."""

    def __init__(self, model, tokenizer):
        super().__init__()
        from open_clip import get_model_preprocess_cfg

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        cfg = get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = size if isinstance(size, int) else size[0]
        self.mean, self.std = tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(clip_preprocess(images, self.size, self.mean, self.std))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device))


def load_clip_encoder(model: str = "ViT-B-32", pretrained: str | None = None, device: str | torch.device = "cpu"):
    """The image/text encoder of the CLIP loss.

    Args:
        model: an open_clip name (``ViT-B-32``), ``local-dir:/folder`` (open_clip_config.json + weights),
            or ``package.module:factory`` for a plug-in: ``factory(pretrained)`` returning an object with
            ``encode_image`` / ``encode_text`` (e.g. ``bench.demo.extractors:DemoContrastiveExtractor``), called
            as ``factory(pretrained, device=device)``.
        pretrained: a local open_clip weights file, an open_clip tag (needs the Hub), or ``random``
            (untrained weights: memory/speed probes only).
    Raises:
        UserError: missing weights or a model that cannot be built, naming ``--clip-pretrained``.
    """
    if ":" in model and not model.startswith(("local-dir:", "hf-hub:")):
        module, _, attr = model.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise UserError(f"--clip-model {model!r}: cannot import it ({error}); use module:factory") from error
        return factory(pretrained, device=str(device))
    import open_clip

    if pretrained is None and not model.startswith(("local-dir:", "hf-hub:")):
        raise UserError(f"the CLIP loss needs weights for {model}: pass --clip-pretrained FILE (an open_clip "
                        "checkpoint), --clip-model local-dir:FOLDER, or --clip-weight 0 to train without it")
    try:
        clip = open_clip.create_model(model, pretrained=None if pretrained == "random" else pretrained)
    except Exception as error:  # open_clip raises RuntimeError/ValueError/OSError for missing weights or configs
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot build the CLIP model {model!r} with pretrained={pretrained!r} ({reason}): "
                        "pass --clip-pretrained FILE with a local open_clip checkpoint") from error
    return OpenClipEncoder(clip, open_clip.get_tokenizer(model))


class ClampedClipLoss:
    """``decode -> encode_image -> clamped cosine`` against precomputed text embeddings.

    Args:
        decoder: a latent decoder (``decode_to_unit`` contract) or a callable latents -> [0, 1] images.
        encode_image: images in [0, 1] (N, 3, H, W) -> embeddings (N, D), differentiable.
        tau: the clamp: samples whose cosine exceeds it contribute no loss and no gradient.
    """

    def __init__(self, decoder: torch.nn.Module | Callable, encode_image: Callable, tau: float = TAU):
        self.decode = (lambda x0: decode_to_unit(decoder, x0)) if hasattr(decoder, "decode") else decoder
        self.encode_image = encode_image
        self.tau = tau

    def __call__(self, x0: torch.Tensor, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, cos = clamped_clip_loss(self.encode_image(self.decode(x0)), text_embeddings, self.tau)
        return loss, {"cos": cos.mean().item(), "active": (cos < self.tau).float().mean().item()}
