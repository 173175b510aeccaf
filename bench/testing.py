"""Tiny random models in the real classes, saved with ``save_pretrained`` so that the registry loads
them as folders exactly like real weights: the dummy models of the test suite and of ``--tiny`` probes.

Configs from diffusers' own Stable Diffusion 2 fast tests (``tests/pipelines/stable_diffusion_2/
test_stable_diffusion.py``, ``get_dummy_components``), with the real CLIP tokenizer (49,408 ids).
"""

import tempfile
from pathlib import Path

import torch

from bench.tokenizer import write_clip_tokenizer

TINY_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True,
)
TINY_VAE = dict(
    block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
)
TINY_TEXT = dict(
    bos_token_id=49406, eos_token_id=49407, pad_token_id=0, hidden_size=32, intermediate_size=37,
    layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, hidden_act="gelu",
    projection_dim=32,
)
TINY_TAESD = dict(
    in_channels=3, out_channels=3, encoder_block_out_channels=[32, 32], decoder_block_out_channels=[32, 32],
    num_encoder_blocks=[1, 1], num_decoder_blocks=[1, 1],
)
# A random open_clip model small enough for CPU tests (ViT, 32 px input: the resize path is exercised).
TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET)


def make_tiny_pipeline(path: str | Path, seed: int = 0, scheduler: str = "DDIMScheduler", sd1: bool = False) -> Path:
    """Write a tiny SD-2-style pipeline folder (32 px latents at 16, images at 32 px) and return its path; ``sd1``
    makes it SD-1.x-style (tokenizer padding with the end token, quick-GELU text encoder, PNDM as SD 1.5 ships)."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    unet = tiny_unet(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE)
    torch.manual_seed(seed)
    text = {**TINY_TEXT, "hidden_act": "quick_gelu", "pad_token_id": 49407} if sd1 else TINY_TEXT
    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_clip_tokenizer(scratch, pad_token="<|endoftext|>" if sd1 else "!")
    options = {"skip_prk_steps": True} if sd1 and scheduler == "PNDMScheduler" else {}
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=getattr(diffusers, scheduler).from_config({**SD_SCHEDULER, **options}), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_taesd(path: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(**TINY_TAESD).save_pretrained(path, safe_serialization=True)
    return Path(path)


def write_tiny_open_clip(folder: str | Path, seed: int = 0) -> str:
    """A random tiny open_clip model as a ``local-dir:`` folder; returns the ``--clip-model`` value."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"
