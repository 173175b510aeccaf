"""`python -m distill.probe`: seconds per step and peak GPU memory of each training scheme, for sizing runs.

Random weights in the Stable Diffusion 2.1-base architecture (configs below; no download) are
written as a pipeline folder, then ``distill.train`` runs a few steps of each scheme on them: random
weights cost the same FLOPs and memory as real ones. ``--tiny`` does the same with the tiny test
models on a CPU in seconds.

The SD 2.1-base shapes are ``bench.sd21``'s.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch


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


def probe(workdir: Path, tiny: bool, schemes: list[str], steps: int, batch_size: int, device: str,
          gradient_checkpointing: bool, fake: str, pipeline: str | None = None) -> list[dict]:
    """Build the models once, then time ``steps`` training steps of each scheme (the first is warm-up)."""
    import gc

    from diffusers import AutoencoderTiny

    from bench.sd21 import save_random_pipeline
    from bench.testing import make_tiny_pipeline, make_tiny_taesd, write_tiny_open_clip
    from distill.train import TrainConfig, train

    if tiny:
        pipeline = pipeline or make_tiny_pipeline(workdir / "pipeline")
        taesd, clip_pretrained = make_tiny_taesd(workdir / "taesd"), None
        clip_model = write_tiny_open_clip(workdir / "clip")
    else:
        device_init = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1.3B weights is slow on a CPU
        pipeline = pipeline or save_random_pipeline(workdir / "pipeline", device=device_init)
        taesd = workdir / "taesd"
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
