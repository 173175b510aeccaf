"""`python -m distill.probe`: seconds per step and peak GPU memory of each training scheme, for sizing runs.

Random weights in the Stable Diffusion 2.1-base architecture (configs below; no download) are
written as a pipeline folder, then ``distill.train`` runs a few steps of each scheme on them: random
weights cost the same FLOPs and memory as real ones. ``--tiny`` does the same with the tiny test
models on a CPU in seconds.

SD 2.1-base configs: ``reference/distill.md`` section 3 (UNet and text encoder as transcribed by
candle from the HF config.json files; 2.1-base is epsilon-prediction at 512 px, latent 64).
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
    center_input_sample=False, act_fn="silu", upcast_attention=False,
)
SD21_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, max_position_embeddings=77, num_hidden_layers=23,
    num_attention_heads=16, projection_dim=512, hidden_act="gelu", layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, sample_size=512, act_fn="silu", scaling_factor=0.18215,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
)
# A small open_clip model for tests and --tiny (ViT, 24 px input so the resize path is exercised).
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_tiny_open_clip(folder: str | Path, seed: int = 0) -> str:
    """A random tiny open_clip model as a ``local-dir:`` folder; returns the ``--clip-model`` value."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"


class RandomClipB32(torch.nn.Module):
    """A random ViT-B/32 CLIP (transformers' CLIPModel defaults: the OpenAI B/32 shape) behind the CLIP-loss
    plug-in interface: same FLOPs as open_clip ViT-B-32 without needing open_clip or torchvision."""

    def __init__(self, tokenizer_dir: str | None = None, device: str = "cpu"):
        super().__init__()
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        self.model = CLIPModel(CLIPConfig()).to(device).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        from distill.clip_loss import clip_preprocess

        return _features(self.model.get_image_features(pixel_values=clip_preprocess(images, 224)))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return _features(self.model.get_text_features(input_ids=ids.input_ids.to(self.model.device)))


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output with the projected features as ``pooler_output``; 4.x the tensor."""
    return getattr(output, "pooler_output", output)


def write_sd21_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """A random-weight SD 2.1-base pipeline folder (UNet saved in float16 to halve the disk write)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.testing import SD_SCHEDULER
    from bench.tokenizer import write_clip_tokenizer

    folder = Path(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1.3B weights is slow on a CPU
    torch.manual_seed(seed)
    with torch.device(device):
        unet, vae = UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD21_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_clip_tokenizer(scratch)
    pipeline = StableDiffusionPipeline(unet=unet.half(), vae=vae.half(), text_encoder=text_encoder.half(),
                                       tokenizer=tokenizer, scheduler=DDIMScheduler(**SD_SCHEDULER),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def probe(workdir: Path, tiny: bool, schemes: list[str], steps: int, batch_size: int, device: str,
          gradient_checkpointing: bool, fake: str, pipeline: str | None = None) -> list[dict]:
    """Build the models once, then time ``steps`` training steps of each scheme (the first is warm-up)."""
    import gc

    from diffusers import AutoencoderTiny

    from bench.testing import make_tiny_pipeline, make_tiny_taesd
    from distill.train import TrainConfig, train

    if tiny:
        pipeline = pipeline or make_tiny_pipeline(workdir / "pipeline")
        taesd, clip_pretrained = make_tiny_taesd(workdir / "taesd"), None
        clip_model = write_tiny_open_clip(workdir / "clip")
    else:
        pipeline, taesd = pipeline or write_sd21_pipeline(workdir / "pipeline"), workdir / "taesd"
        AutoencoderTiny().save_pretrained(taesd)  # TAESD's default config is the SD one
        clip_model, clip_pretrained = "distill.probe:RandomClipB32", str(Path(pipeline) / "tokenizer")
    prompts = workdir / "prompts.txt"
    prompts.write_text("\n".join(f"a photo of object number {i}" for i in range(max(64, 4 * batch_size))))
    results = []
    for scheme in schemes:
        cfg = TrainConfig(prompts=str(prompts), teacher=str(pipeline), student_init=str(pipeline), scheme=scheme,
                          out=str(workdir / f"run-{scheme}"), max_steps=steps, batch_size=batch_size, device=device,
                          gradient_checkpointing=gradient_checkpointing, fake=fake, taesd=str(taesd),
                          clip_model=clip_model, clip_pretrained=clip_pretrained, report_to="none", sample_every=0,
                          clip_weight_end=0.1 if scheme == "lora" else 0.0,  # the CLIP loss on in every timed step
                          checkpoint_every=0, save_final=False, log_every=max(1, steps))
        summary = train(cfg)
        memory = summary["peak_memory_gib"]
        print(f"{scheme}: {summary['seconds_per_step']:.3f} s/step at batch {batch_size}, peak GPU memory "
              + (f"{memory:.1f} GiB" if memory is not None else "n/a (CPU)"), flush=True)
        results.append({"scheme": scheme, "batch_size": batch_size, **summary})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="distill.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (seconds), to check the probe")
    parser.add_argument("--schemes", default="full,lora", help="comma-separated schemes (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="steps per scheme; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=None, help="per-GPU batch (default: 16; --tiny: 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fake", default="lora", choices=["lora", "full"], help="fake teacher kind")
    parser.add_argument("--workdir", help="where the random models go (default: a temporary folder)")
    parser.add_argument("--pipeline", help="an existing pipeline folder (e.g. real SD 2.1-base weights) to use as "
                                           "teacher and student init instead of writing random weights")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    batch_size = args.batch_size or (2 if args.tiny else 16)
    device = "cpu" if args.tiny and args.device == "auto" else args.device
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        results = probe(workdir, args.tiny, args.schemes.split(","), args.steps, batch_size, device,
                        args.gradient_checkpointing, args.fake, args.pipeline)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    from bench.errors import exit_on_user_error

    with exit_on_user_error("distill.probe"):
        main()
