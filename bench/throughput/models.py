"""Random models in the SD 2.1-base shapes, stand-in extractors in the real ones, and their FLOPs.

Random weights cost the same FLOPs as real ones. The extractors run the real code paths: clean-fid's ``clean``
resizer + torchvision Inception-v3 to the 2048-d pool (fp32, TF32 off), and open_clip ViT-g-14's image tower via
``ClipExtractor.from_components``. ``tiny`` builds the test configs instead (seconds on a CPU).
"""

import torch

from bench.features import ClipExtractor, InceptionExtractor
from bench.load import LoadedModel
from bench.registry import TEACHER_SCHEDULER, ModelSpec
from bench.sd21 import SCHEDULER
from bench.testing import TINY_OPEN_CLIP


def build_generator(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    if not tiny:
        from bench.sd21 import random_components

        parts = random_components(dtype, str(device), seed)
        parts.pop("taesd")
        return parts
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.testing import TINY_TEXT, TINY_UNET, TINY_VAE

    torch.manual_seed(seed)
    with torch.device(device):
        parts = {"unet": UNet2DConditionModel(**TINY_UNET), "vae": AutoencoderKL(**TINY_VAE),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**TINY_TEXT))}
    return {name: m.to(dtype).eval().requires_grad_(False) for name, m in parts.items()}


def loaded(parts: dict, tokenizer, device, dtype, steps: int, cfg: float) -> LoadedModel:
    """A one-step student, or the multi-step teacher with the sampler it is evaluated with (``TEACHER_SCHEDULER``)."""
    spec = ModelSpec(f"random-sd21-{steps}step", "random", kind="one-step" if steps == 1 else "multi-step",
                     steps=steps, guidance_scale=cfg, scheduler=None if steps == 1 else TEACHER_SCHEDULER)
    return LoadedModel(spec, parts["unet"], parts["text_encoder"], tokenizer, parts["vae"],
                       dict(SCHEDULER, _class_name="DDIMScheduler"), device, dtype, {"unet": "random"})


def teacher_scheduler():
    """The naive pipeline's 25-step sampler: the teacher's, as SD 2.1-base's folder ships it."""
    import diffusers

    from bench.generate import SHIPPED_SETTINGS

    return getattr(diffusers, TEACHER_SCHEDULER).from_config({**SCHEDULER, **SHIPPED_SETTINGS[TEACHER_SCHEDULER]})


class _Pixels(torch.nn.Module):
    """clean-fid's Inception takes 0..255 (and, for ``resize_inside``, resizes to 299 itself); torchvision's
    network wants [-1, 1]."""

    def __init__(self, resize_inside: bool):
        super().__init__()
        self.resize_inside = resize_inside

    def forward(self, x):
        if self.resize_inside:
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return x / 127.5 - 1


class RandomInception(InceptionExtractor):
    """The real extractor's code path (fp32, TF32 off; ``"clean"``: clean resize to 299 outside the network,
    ``"adm"``: BGR, resized inside) on a random-weight network."""

    def __init__(self, tiny: bool, device: torch.device, batch_size: int, mode: str = "clean"):
        from cleanfid.resize import make_resizer

        self.mode, self.batch_size, self.allow_tf32, self.device = mode, batch_size, False, device
        self._resize = make_resizer("PIL", False, "bicubic", (299, 299))
        with torch.device(device):
            if tiny:
                net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2),
                                          torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            else:
                from torchvision.models import inception_v3

                net = inception_v3(weights=None, aux_logits=False, init_weights=False)
                net.fc = torch.nn.Identity()  # 2048-d pool features
        self.model = torch.nn.Sequential(_Pixels(mode == "adm"), net).eval().requires_grad_(False)
        self.id = f"random-inception{'-tiny' if tiny else '-v3'}/{mode}/tf32=0"


def build_clip(tiny: bool, device: torch.device, precision: str, batch_size: int) -> ClipExtractor:
    import open_clip

    name = "bench-throughput-tiny" if tiny else "ViT-g-14"
    if tiny:
        open_clip.factory._MODEL_CONFIGS.setdefault(name, TINY_OPEN_CLIP)
    with torch.device(device):
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    return ClipExtractor.from_components(model, preprocess, open_clip.get_tokenizer(name), id=f"random-{name}",
                                         device=device, batch_size=batch_size, precision=precision)


@torch.no_grad()
def count_flops(parts: dict, tokenizer, inception, clip) -> dict:
    """FLOPs per image of each component (one sample through FlopCounterMode, attention as plain matmuls)."""
    from PIL import Image
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn) -> float:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    unet, vae, text = parts["unet"], parts["vae"], parts["text_encoder"]
    dev = unet.device
    z = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, device=dev,
                    dtype=unet.dtype)
    ids = tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(dev)
    emb, t = text(ids)[0], torch.full((1,), 999, device=dev)
    clip_in = clip.preprocess(Image.new("RGB", (256, 256)))[None].to(dev, clip.dtype)
    return {"text_encoder": flops(lambda: text(ids)), "unet": flops(lambda: unet(z, t, encoder_hidden_states=emb)),
            "vae_decoder": flops(lambda: vae.decode(z)),
            "inception": flops(lambda: inception.model(torch.rand(1, 3, 299, 299, device=dev) * 255)),
            "clip_image": flops(lambda: clip.model.encode_image(clip_in))}


def generation_flops(f: dict, steps: int, cfg: float) -> float:
    k = 2 if cfg > 1 else 1  # cfg: cond + uncond text and UNet passes per image
    return f["text_encoder"] * k + f["unet"] * steps * k + f["vae_decoder"]


def feature_flops(f: dict) -> float:
    """The metric networks per image: Inception twice (FID and precision/recall features) and the CLIP tower."""
    return 2 * f["inception"] + f["clip_image"]
