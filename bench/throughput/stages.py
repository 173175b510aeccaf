"""The timed stages: the naive diffusers loop, our engine, the parts of ours one at a time, and the check that the
fast path gives the plain path's features."""

import copy
import threading
import time
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.features import ClipExtractor
from bench.generate import FeaturePipeline, Sampler
from bench.load import encode_prompts
from bench.protocol import to_metric_images
from bench.store import SampleStore

CAPTIONS = ["A man riding a red motorcycle down a dirt road.", "Two dogs playing with a frisbee in a park.",
            "A plate of pasta with tomatoes and basil on a wooden table.", "A city street at night with a bus."]


def prompts(indices) -> list[str]:
    return [f"{CAPTIONS[i % len(CAPTIONS)]} ({i})" for i in indices]


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
