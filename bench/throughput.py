"""``python -m bench.throughput``: our engine against the naive diffusers loop, one run, one table.

Random weights in the SD 2.1-base architecture (``bench.sd21``; random weights cost the same FLOPs as real
ones), built on the target device, nothing downloaded. Stages, in order, each printed and saved (``--out``, JSON
with the table) as soon as it ends, so a run killed at its limit keeps what it measured:

1. naive one-step: ``StableDiffusionPipeline`` fp16, batch 16, Euler trailing (t = 999), PIL output, PNGs saved inline;
2. ours one-step: ``Sampler`` + ``FeaturePipeline`` (256 px LANCZOS, Inception + CLIP features) + ``SampleStore``;
3. naive 25-step DDIM cfg 7.5;  4. ours 25-step cfg 7.5;
5. ``--check-equivalence N``: the plain path (eager, fp32 features, sequential) against the fast one, same seeds.

Stand-in extractors (random weights, real shapes): clean-fid's ``clean`` resizer + torchvision Inception-v3 to
the 2048-d pool (fp32, TF32 off), and open_clip ViT-g-14's image tower via ``ClipExtractor.from_components``.
``--tiny`` runs the same code on a CPU in seconds (tiny configs, tiny CLIP, a small conv net for Inception).
"""

import argparse
import copy
import faulthandler
import importlib.metadata
import json
import platform
import tempfile
import threading
import time
import traceback
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.features import ClipExtractor, InceptionExtractor
from bench.generate import FeaturePipeline, Sampler
from bench.load import LoadedModel, encode_prompts
from bench.protocol import to_metric_images
from bench.registry import ModelSpec
from bench.sd21 import SCHEDULER
from bench.store import SampleStore, atomic_write_text

PEAK_TFLOPS = 800.0  # dense fp16/bf16 matmul on one H100 (8192^3 bf16 product measured at ~798 TFLOP/s)
TARGETS = {"ours-1step": (2.0, 3.0, 140.0), "ours-25step": (1.5, 2.0, None)}  # (x naive, stretch x, stretch img/s)
BUSY_TARGET = 0.90
PACKAGES = ("diffusers", "transformers", "open_clip_torch", "clean-fid", "torchvision", "numpy", "pillow")
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CAPTIONS = ["A man riding a red motorcycle down a dirt road.", "Two dogs playing with a frisbee in a park.",
            "A plate of pasta with tomatoes and basil on a wooden table.", "A city street at night with a bus."]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def prompts(indices) -> list[str]:
    return [f"{CAPTIONS[i % len(CAPTIONS)]} ({i})" for i in indices]


# ----------------------------------------------------------------------------------------------------- models
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
    spec = ModelSpec(f"random-sd21-{steps}step", "random", kind="one-step" if steps == 1 else "multi-step",
                     steps=steps, guidance_scale=cfg, scheduler=None if steps == 1 else "DDIMScheduler")
    return LoadedModel(spec, parts["unet"], parts["text_encoder"], tokenizer, parts["vae"],
                       dict(SCHEDULER, _class_name="DDIMScheduler"), device, dtype, {"unet": "random"})


class _Pixels(torch.nn.Module):  # clean-fid's Inception takes 0..255; torchvision's wants [-1, 1]
    def forward(self, x):
        return x / 127.5 - 1


class RandomInception(InceptionExtractor):
    """The real extractor's code path (clean resize to 299, fp32, TF32 off) on a random-weight network."""

    def __init__(self, tiny: bool, device: torch.device, batch_size: int):
        from cleanfid.resize import make_resizer

        self.mode, self.batch_size, self.allow_tf32, self.device = "clean", batch_size, False, device
        self._resize = make_resizer("PIL", False, "bicubic", (299, 299))
        with torch.device(device):
            if tiny:
                net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, 4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2),
                                          torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            else:
                from torchvision.models import inception_v3

                net = inception_v3(weights=None, aux_logits=False, init_weights=False)
                net.fc = torch.nn.Identity()  # 2048-d pool features
        self.model = torch.nn.Sequential(_Pixels(), net).eval().requires_grad_(False)
        self.id = f"random-inception{'-tiny' if tiny else '-v3'}/clean/tf32=0"


def build_clip(tiny: bool, device: torch.device, precision: str, batch_size: int) -> ClipExtractor:
    import open_clip

    name = "bench-throughput-tiny" if tiny else "ViT-g-14"
    if tiny:
        open_clip.factory._MODEL_CONFIGS.setdefault(name, TINY_CLIP)
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


def work_flops(f: dict, steps: int, cfg: float, features: bool) -> float:
    k = 2 if cfg > 1 else 1  # cfg: cond + uncond text and UNet passes per image
    return f["text_encoder"] * k + f["unet"] * steps * k + f["vae_decoder"] + (
        f["inception"] + f["clip_image"] if features else 0)


# ------------------------------------------------------------------------------------------------------ stages
class GpuBusy:
    """Mean NVML utilization (the share of time a kernel ran), sampled every 50 ms in a thread; None without NVML."""

    def __init__(self, device: torch.device):
        self.samples, self.stop, self.poll = [], threading.Event(), None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(device))
            self.poll = lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except Exception as error:
            if device.type == "cuda":
                print(f"GPU busy: n/a ({type(error).__name__}: {error})", flush=True)

    def _loop(self):
        while not self.stop.wait(0.05):
            self.samples.append(self.poll())

    def __enter__(self):
        self.thread = threading.Thread(target=self._loop if self.poll else lambda: None, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def share(self):
        return float(np.mean(self.samples)) / 100 if self.samples else None


def run_naive(pipe, n: int, batch: int, steps: int, cfg: float, folder: Path, deadline: float) -> dict:
    folder.mkdir(parents=True)

    def generate(indices):
        return pipe(prompts(indices), num_inference_steps=steps, guidance_scale=cfg, output_type="pil").images

    start = time.perf_counter()
    generate(range(batch))  # warm-up: CUDA/cuDNN initialisation, not timed
    warmup, gen_s, png_s, done = time.perf_counter() - start, 0.0, 0.0, 0
    with GpuBusy(pipe.device) as busy:
        start = time.perf_counter()
        for first in range(0, n, batch):
            if time.perf_counter() > deadline:
                break
            tick = time.perf_counter()
            images = generate(range(first, min(first + batch, n)))
            tock = time.perf_counter()
            for i, image in enumerate(images):
                image.save(folder / f"{first + i:08d}.png")
            gen_s, png_s, done = gen_s + tock - tick, png_s + time.perf_counter() - tock, done + len(images)
        wall = time.perf_counter() - start
    return {"images": done, "wall_s": wall, "warmup_s": warmup, "img_s": done / wall, "gpu_busy": busy.share,
            "img_s_without_png": done / gen_s if gen_s else None, "png_s_per_image": png_s / max(done, 1),
            "truncated": done < n}


def run_ours(model, extractors: dict, args, n: int, folder: Path, deadline: float) -> dict:
    from bench.report import PngWriter

    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    sampler = Sampler(model, seed=args.seed, compile=args.compile)
    pipeline = FeaturePipeline(sampler, to_metric_images, extractors, workers=args.workers)
    store = SampleStore(folder / "store", n, args.shard_size, {"bench": "throughput", "spec": model.spec.to_dict()})
    store.claim()
    start, batch = time.perf_counter(), args.batch_size
    pipeline.run(prompts(range(n, n + batch)), np.arange(n, n + batch), batch)  # warm-up: compile, autotune
    warmup, done, busy = time.perf_counter() - start, 0, GpuBusy(model.device)
    pipeline.saver = saver = PngWriter(folder / "png") if args.png else None  # after the warm-up: none of its PNGs
    with busy:
        start = time.perf_counter()
        work = ((shard, prompts(indices), indices) for shard in range(store.num_shards)
                for indices in [store.shard_indices(shard)])
        for shard, arrays in pipeline.run_shards(work, batch):
            store.write_features(shard, arrays)
            done += len(arrays["finite"])
            if time.perf_counter() > deadline:
                break
        if saver:
            saver.close()
        wall = time.perf_counter() - start
    pipeline.close()
    result = {"images": done, "wall_s": wall, "warmup_s": warmup, "img_s": done / wall, "gpu_busy": busy.share,
              "truncated": done < n, "compiled": args.compile}
    if args.components and time.perf_counter() < deadline:
        result["components_ms_per_image"] = component_times(sampler, extractors, batch, reps=3 if n_steps(model) == 1
                                                            else 1)
    torch.backends.cudnn.benchmark = False
    return result


def n_steps(model) -> int:
    return 1 if model.spec.kind == "one-step" else model.spec.steps


def component_times(sampler, extractors: dict, batch: int, reps: int) -> dict:
    """Milliseconds per image of each part of ours, one batch at a time on the calling thread, synchronised.

    Against the stage's own ms per image this says where the time goes: a slow part, or time lost between
    parts (hand-off, threads) when the parts add up to less than the stage. Parts marked "(in latents)" are
    also inside the latents row.
    """
    model = sampler.model
    indices = np.arange(batch)
    texts = prompts(indices)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def ms(fn):
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            out = fn()
        sync()
        return (time.perf_counter() - start) / reps / batch * 1e3, out

    times = {}
    times["text encoder (in latents)"], _ = ms(lambda: encode_prompts(model.tokenizer, model.text_encoder, texts))
    times["noise draw + copy (in latents)"], _ = ms(lambda: sampler.noise(indices))
    times[f"latents (text, noise, UNet x{n_steps(model)})"], latents = ms(lambda: sampler.latents(texts, indices))
    times["VAE decode + uint8"], (images, _) = ms(lambda: sampler.decode_images(latents))
    times["device to host"], host = ms(lambda: images.cpu().numpy())
    times["metric resize 256 px (CPU)"], metric = ms(lambda: to_metric_images(host))
    for role, extractor in extractors.items():
        times[f"{role} features (CPU preprocessing + forward)"], _ = ms(partial(extractor.image_features, metric))
    return times


def check_equivalence(plain_model, fast_model, inception, clip, args, n: int) -> dict:
    """Plain path (eager, contiguous, fp32 CLIP, sequential) vs the fast path (FeaturePipeline with the levers)."""
    from bench.metrics.fid import fid_from_features

    batch, indices = args.batch_size, np.arange(n)
    clip32 = ClipExtractor.from_components(copy.deepcopy(clip.model), clip.preprocess, clip.tokenizer,
                                           id=clip.id + "/plain", device=clip.device, batch_size=clip.batch_size)
    sampler, plain = Sampler(plain_model, seed=args.seed), {"images": [], "finite": [], "inception": [], "clip": []}
    for first in range(0, n, batch):
        images, finite = sampler(prompts(indices[first:first + batch]), indices[first:first + batch])
        metric = to_metric_images(images)
        for key, value in [("images", images), ("finite", finite), ("inception", inception.image_features(metric)),
                           ("clip", clip32.image_features(metric))]:
            plain[key].append(value)
    plain = {key: np.concatenate(value) for key, value in plain.items()}
    del clip32

    kept = {}  # the fast path's images, through FeaturePipeline's saver hook
    keep = SimpleNamespace(submit=lambda images, idx: kept.__setitem__(int(idx[0]), images.copy()))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    pipeline = FeaturePipeline(Sampler(fast_model, seed=args.seed, compile=args.compile), to_metric_images,
                               {"inception": inception, "clip": clip}, keep, workers=args.workers)
    fast = pipeline.run(prompts(indices), indices, batch)
    pipeline.close()
    torch.backends.cudnn.benchmark = False
    fast_images = np.concatenate([kept[k] for k in sorted(kept)])

    def fid(a, b):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fid_from_features(a, b, check_sqrtm=False)
        except ValueError as error:
            return f"error: {error}"

    half, fid_fast = n // 2, fid(plain["inception"], fast["inception"])
    fid_halves = fid(plain["inception"][:half], plain["inception"][half:]) if half > 1 else None
    cos = (plain["clip"] * fast["clip"]).sum(1) / (
        np.linalg.norm(plain["clip"], axis=1) * np.linalg.norm(fast["clip"], axis=1) + 1e-30)
    return {"images": n, "nonfinite_plain": int((~plain["finite"]).sum()),
            "nonfinite_fast": int((~fast["finite"]).sum()), "image_std": float(plain["images"].std()),
            "image_max_abs_diff": int(np.abs(plain["images"].astype(np.int16) - fast_images).max()),
            "image_frac_pixels_differing": float((plain["images"] != fast_images).mean()),
            "inception_max_abs_diff": float(np.abs(plain["inception"] - fast["inception"]).max()),
            "inception_max_abs": float(np.abs(plain["inception"]).max()),
            "fid_plain_vs_fast": fid_fast, "fid_plain_half_vs_half": fid_halves,  # the second: sampling-noise scale
            "fid_ratio_to_halves": fid_fast / fid_halves if isinstance(fid_halves, float) and isinstance(
                fid_fast, float) and fid_halves > 0 else None,
            "clip_max_abs_diff": float(np.abs(plain["clip"] - fast["clip"]).max()),
            "clip_min_cosine": float(cos.min())}


# ------------------------------------------------------------------------------------------------------ report
def fmt(value, spec=".1f", missing="n/a"):
    return missing if value is None else format(value, spec)


def table(results: dict, meta: dict) -> str:
    on_gpu = meta["device_type"] == "cuda"
    lines = [f"{'stage':<30}{'images':>7}{'warm-up s':>10}{'wall s':>8}{'img/s':>8}{'x naive':>8}{'TFLOP/s':>9}"
             f"{'% peak':>8}{'GPU busy':>9}  targets / notes"]
    for name, r in results.items():
        tflops = r["img_s"] * r["flops_per_image"] / 1e12
        ratio, note = r.get("x_naive"), ""
        if "img_s_without_png" in r:
            note = f"{fmt(r['img_s_without_png'])} img/s without the PNG saves"
        elif name.startswith("ours"):
            low, stretch, stretch_img_s = TARGETS.get(name, TARGETS["ours-25step"])
            met = "n/a" if ratio is None else "met" if ratio >= low else "MISSED"
            busy = "n/a" if r["gpu_busy"] is None else "met" if r["gpu_busy"] >= BUSY_TARGET else "MISSED"
            stretch = f"{stretch:g}x" + (f" / {stretch_img_s:.0f} img/s" if stretch_img_s else "")
            note = (f">={low:g}x: {met} (stretch {stretch}); busy >={BUSY_TARGET:.0%}: {busy}; "
                    f"x{fmt(r.get('x_naive_without_png'), '.2f')} vs naive w/o PNG")
        lines.append(f"{r['label']:<30}{r['images']:>7}{r['warmup_s']:>10.1f}{r['wall_s']:>8.1f}{r['img_s']:>8.2f}"
                     f"{fmt(ratio, '.2f'):>8}{tflops:>9.2f}{fmt(tflops / PEAK_TFLOPS * 100 if on_gpu else None):>8}"
                     f"{fmt(r['gpu_busy'] * 100 if r.get('gpu_busy') is not None else None):>9}  {note}"
                     f"{' (TRUNCATED by --budget-s)' if r['truncated'] else ''}")
        parts = r.get("components_ms_per_image")
        if parts:
            total = sum(value for part, value in parts.items() if "(in latents)" not in part)
            lines.append(f"    parts, one at a time (stage: {1e3 / r['img_s']:.2f} ms/img; parts sum {total:.2f}): "
                         + "; ".join(f"{part} {value:.2f}" for part, value in parts.items()))
    lines.append(f"% peak: of {PEAK_TFLOPS:.0f} TFLOP/s dense fp16 (H100), n/a off a GPU; FLOPs per image: text "
                 "encoder and UNet x steps x (2 if cfg), VAE decoder, + Inception + CLIP image tower for ours; "
                 "warm-up (untimed) holds torch.compile; CLIP " + meta["clip_precision"])
    return "\n".join(lines)


def save(path: Path, meta: dict, results: dict, equivalence) -> None:
    text = table(results, meta)
    payload = {"meta": meta, "stages": results, "equivalence": equivalence, "table": text}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny configs: the same code on a CPU in seconds")
    p.add_argument("--batch-size", type=int, help="our engine's batch (default 64 on a GPU, 8 on a CPU)")
    p.add_argument("--naive-batch-size", type=int, default=16)
    p.add_argument("--n-onestep", type=int, help="images per one-step stage (default 768; tiny 16; 0 skips both)")
    p.add_argument("--n-multistep", type=int, help="images per 25-step stage (default 128; tiny 8; 0 skips both)")
    p.add_argument("--naive-max-images", type=int, help="at most this many images in a naive stage (its rate is "
                   "steady, and at 14 img/s with PNGs a 2,000-image naive stage would take most of a device session)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile UNet and VAE decode (warm-up batch, excluded from timing)")
    p.add_argument("--channels-last", action="store_true", help="channels_last UNet and VAE (ours only)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cudnn.benchmark during our stages")
    p.add_argument("--clip-precision", choices=["fp32", "fp16", "bf16"], help="default fp16 on a GPU, fp32 on a CPU")
    p.add_argument("--workers", type=int, default=4, help="FeaturePipeline worker threads")
    p.add_argument("--shard-size", type=int, default=1024, help="SampleStore shard (rounded to the batch size)")
    p.add_argument("--png", action="store_true", help="ours also writes 512 px PNGs (PngWriter)")
    p.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                   help="after each of our stages, time its parts one at a time (ms per image)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--check-equivalence", type=int, default=0, metavar="N", help="plain vs fast path on N images")
    p.add_argument("--budget-s", type=float, default=420, help="no stage starts, and timed loops stop, after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/throughput.json")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (64 if gpu else 8)
    args.clip_precision = args.clip_precision or ("fp16" if gpu else "fp32")
    up = lambda n: -(-n // args.batch_size) * args.batch_size  # noqa: E731 - whole batches: no recompiles
    args.n_onestep = up((16 if args.tiny else 768) if args.n_onestep is None else args.n_onestep)
    args.n_multistep = up((8 if args.tiny else 128) if args.n_multistep is None else args.n_multistep)
    args.check_equivalence = up(args.check_equivalence) if args.check_equivalence else 0
    args.shard_size = up(args.shard_size)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    faulthandler.dump_traceback_later(args.budget_s + 90, exit=True)  # a hung stage still ends, with a traceback
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-") as scratch:  # PNGs, shards, tokenizer
            return measure(args, Path(scratch))
    finally:
        faulthandler.cancel_dump_traceback_later()


def measure(args, scratch: Path) -> dict:
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    device = torch.device(args.device)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny models gain nothing from threads; OpenMP barriers stall on a shared CPU
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 features: TF32 off
    if args.compile:
        torch._dynamo.config.automatic_dynamic_shapes = False  # a new shape gets its own static graph
    out = Path(args.out)
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    from bench.tokenizer import write_clip_tokenizer

    # 1. Models: ours (levers applied once) and the naive loop's own contiguous copy of UNet and VAE.
    ours = build_generator(args.tiny, device, dtype, args.seed)
    tokenizer = write_clip_tokenizer(scratch / "tokenizer")
    naive = {**ours, "unet": copy.deepcopy(ours["unet"]), "vae": copy.deepcopy(ours["vae"])}
    inception = RandomInception(args.tiny, device, batch_size=args.batch_size)
    clip = build_clip(args.tiny, device, args.clip_precision, args.batch_size)
    flops = count_flops(ours, tokenizer, inception, clip)
    if args.channels_last:
        for module in (ours["unet"], ours["vae"]):
            module.to(memory_format=torch.channels_last)
    extractors = {"inception": inception, "clip": clip}
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "versions": {name: _version(name) for name in PACKAGES},
            "settings": vars(args), "dtype": str(dtype), "clip": clip.id, "clip_precision": args.clip_precision,
            "inception": inception.id, "flops_per_image": flops, "peak_tflops": PEAK_TFLOPS,
            "setup_s": time.perf_counter() - t0, "errors": {}}
    print(f"{meta['device']}, torch {torch.__version__}, {dtype}; setup {meta['setup_s']:.1f} s; GFLOP per image: "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()), flush=True)
    pipe = StableDiffusionPipeline(vae=naive["vae"], text_encoder=naive["text_encoder"], tokenizer=tokenizer,
                                   unet=naive["unet"], scheduler=EulerDiscreteScheduler.from_config(SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    results, equivalence, errors = {}, None, meta["errors"]

    def record(name, label, result, steps, cfg, features):
        result.update(label=label, flops_per_image=work_flops(flops, steps, cfg, features))
        naive_row = results.get(name.replace("ours", "naive"))
        if name.startswith("ours") and naive_row:
            result["x_naive"] = result["img_s"] / naive_row["img_s"]
            if naive_row.get("img_s_without_png"):
                result["x_naive_without_png"] = result["img_s"] / naive_row["img_s_without_png"]
        results[name] = result
        print("\n".join(table({name: result}, meta).splitlines()[1:-1]), flush=True)
        save(out, meta, results, equivalence)

    # 2-5. The four timed stages, in order; each starts only inside the budget.
    onestep, multistep = (1, 0.0), (args.steps, args.cfg)
    stages = [("naive-1step", "naive one-step (PNG inline)", onestep), ("ours-1step", "ours one-step", onestep),
              (f"naive-{args.steps}step", f"naive {args.steps}-step cfg {args.cfg:g}", multistep),
              (f"ours-{args.steps}step", f"ours {args.steps}-step cfg {args.cfg:g}", multistep)]
    print(table({}, meta).splitlines()[0], flush=True)
    for name, label, (steps, cfg) in stages:
        n = args.n_onestep if steps == 1 else args.n_multistep
        if name.startswith("naive") and args.naive_max_images is not None:
            n = min(n, args.naive_max_images)
        if n <= 0 or time.perf_counter() > deadline or (args.skip_naive and name.startswith("naive")):
            print(f"{label}: skipped", flush=True)
            continue
        folder, result = scratch / name, None
        while result is None:
            try:
                if name.startswith("naive"):
                    pipe.scheduler = (DDIMScheduler.from_config(SCHEDULER) if steps > 1 else
                                      EulerDiscreteScheduler.from_config(SCHEDULER, timestep_spacing="trailing"))
                    result = run_naive(pipe, n, args.naive_batch_size, steps, cfg, folder, deadline)
                else:
                    result = run_ours(loaded(ours, tokenizer, device, dtype, steps, cfg), extractors, args, n,
                                      folder / ("eager" if "compile" in errors else "compiled"), deadline)
            except Exception as error:  # one broken stage must not lose the others' numbers
                traceback.print_exc()
                errors[name] = f"{type(error).__name__}: {error}"[:500]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if not (args.compile and name.startswith("ours")):
                    break
                args.compile, errors["compile"] = False, f"off after {name} failed: {name} and later stages eager"
        if result is None:
            save(out, meta, results, equivalence)
            continue
        record(name, label, result, steps, cfg, not name.startswith("naive"))

    # 6. Equivalence: the levers must not move the metrics.
    if args.check_equivalence and time.perf_counter() < deadline:
        try:
            equivalence = check_equivalence(loaded(naive, tokenizer, device, dtype, 1, 0.0),
                                            loaded(ours, tokenizer, device, dtype, 1, 0.0), inception, clip, args,
                                            args.check_equivalence)
            print("equivalence (plain vs fast, one-step): " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in equivalence.items()), flush=True)
        except Exception as error:
            traceback.print_exc()
            errors["equivalence"] = f"{type(error).__name__}: {error}"[:500]
    busy = [(r["gpu_busy"], r["wall_s"]) for name, r in results.items()
            if name.startswith("ours") and r["gpu_busy"] is not None]
    meta["gpu_busy_ours"] = sum(b * w for b, w in busy) / sum(w for _, w in busy) if busy else None
    meta["total_s"] = time.perf_counter() - t0
    save(out, meta, results, equivalence)
    print(f"\n{table(results, meta)}\nGPU busy over our stages: {fmt(meta['gpu_busy_ours'], '.1%')} "
          f"(target >= {BUSY_TARGET:.0%}); errors: {errors or 'none'}; total {meta['total_s']:.1f} s; written {out}",
          flush=True)
    return {"meta": meta, "stages": results, "equivalence": equivalence}


if __name__ == "__main__":
    main()
