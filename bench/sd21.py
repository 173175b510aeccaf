"""The Stable Diffusion 2.1-base architecture, shipped as configs: random weights in the real shapes
give real speed and memory figures without a download.

Values from the published ``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json`` and
``scheduler/scheduler_config.json`` of ``stabilityai/stable-diffusion-2-1-base`` (epsilon prediction, 512 px,
latent 64); keys not listed take diffusers' / transformers' defaults, which equal the published values.
"""

import torch

UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True, norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
    center_input_sample=False, upcast_attention=False,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
TEXT_ENCODER = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, projection_dim=512, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
    pad_token_id=0,
)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
TAESD = dict()  # diffusers' AutoencoderTiny defaults are TAESD's architecture


def random_components(dtype: torch.dtype = torch.float16, device: str = "cpu", seed: int = 0) -> dict:
    """UNet, VAE, text encoder and TAESD with random weights in the SD 2.1-base shapes."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel(**UNET),
            "vae": AutoencoderKL(**VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
            "taesd": AutoencoderTiny(**TAESD),
        }
    return {name: module.to(dtype).eval().requires_grad_(False) for name, module in parts.items()}


def save_random_pipeline(path, dtype: torch.dtype = torch.float16, scheduler: str = "DDIMScheduler", seed: int = 0,
                         device: str = "cpu"):
    """A StableDiffusionPipeline folder with random SD 2.1-base weights and the real CLIP tokenizer (``device``
    only speeds up the random initialisation)."""
    import tempfile

    import diffusers
    from diffusers import StableDiffusionPipeline

    from bench.tokenizer import write_clip_tokenizer

    parts = {name: part.cpu() for name, part in random_components(dtype, device, seed).items()}
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_clip_tokenizer(scratch)
    pipeline = StableDiffusionPipeline(
        unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer,
        scheduler=getattr(diffusers, scheduler)(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path, safe_serialization=True)
    return path
