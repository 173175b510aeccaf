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


class GpuMonitor:
    """NVML samples every 50 ms in a thread: utilization (the share of time a kernel ran), SM clock (MHz) and power
    (W); all None without NVML (a CPU run)."""

    def __init__(self, device: torch.device):
        self.samples, self.stop, self.poll = [], threading.Event(), None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(device))
            self.poll = lambda: (pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                                 pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                                 pynvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        except Exception as error:
            if device.type == "cuda":
                print(f"GPU monitor: n/a ({type(error).__name__}: {error})", flush=True)

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

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_busy": None, "sm_clock_mhz": None, "power_w": None}
        busy, clock, power = np.array(self.samples, dtype=np.float64).T
        return {"gpu_busy": float(busy.mean()) / 100, "sm_clock_mhz": float(clock.mean()),
                "sm_clock_min_mhz": float(clock.min()), "power_w": float(power.mean())}


def timed(run, n: int, batch: int, device: torch.device, deadline: float) -> dict:
    """``run(indices)`` over ``n`` images in batches after one untimed warm-up batch, with the GPU monitored."""
    start = time.perf_counter()
    run(np.arange(n, n + batch))  # warm-up: CUDA/cuDNN initialisation and compilation, not timed
    warmup, done = time.perf_counter() - start, 0
    with GpuMonitor(device) as monitor:
        start = time.perf_counter()
        for first in range(0, n, batch):
            if time.perf_counter() > deadline:
                break
            run(np.arange(first, min(first + batch, n)))
            done += min(batch, n - first)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    return {"images": done, "wall_s": wall, "warmup_s": warmup, "img_s": done / wall, "batch": batch,
            "truncated": done < n, **monitor.summary()}


def best_batch(make_trial, make_final, candidates, n: int, device: torch.device, deadline: float) -> dict:
    """The timed run of ``make_final(batch)`` at the fastest of ``candidates``, each tried first as
    ``make_trial(batch)`` on two batches; every candidate's trial rate is kept.

    Our side tries its candidates eagerly and compiles only the winner: each batch size is its own static graph.
    """
    rates = {}
    for batch in candidates:
        try:
            rates[batch] = timed(make_trial(batch), 2 * batch, batch, device, deadline)["img_s"]
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
    best = max(rates, key=rates.get)
    return {**timed(make_final(best), n, best, device, deadline), "batch_rates": rates}


def naive_generation(pipe, steps: int, cfg: float):
    """The diffusers pipeline to uint8 images in host memory: ``output_type="np"`` then the uint8 conversion."""
    def make(batch):
        def run(indices):
            images = pipe(prompts(indices), num_inference_steps=steps, guidance_scale=cfg, output_type="np").images
            return (images * 255).round().astype(np.uint8)
        return run
    return make


def ours_generation(sampler: Sampler):
    """Our sampler to uint8 images in host memory (pinned, copied without draining the GPU's queue)."""
    def make(batch):
        def run(indices):
            images, _ = sampler.decode_images(sampler.latents(prompts(indices), indices))
            host = torch.empty(images.shape, dtype=images.dtype, pin_memory=images.is_cuda)
            return host.copy_(images, non_blocking=True)
        return run
    return make


def naive_end_to_end(pipe, n: int, batch: int, steps: int, cfg: float, folder: Path, extractors: dict,
                     device: torch.device, deadline: float) -> dict:
    """What the published evaluation scripts do: the pipeline writes PNGs, then clean-fid reads them back for the
    FID features (``clean``) and the precision/recall features (``legacy_tensorflow``: resized inside the network),
    and an open_clip pass reads them back for the CLIP score; the same networks as ours."""
    from cleanfid.fid import get_folder_features
    from PIL import Image

    folder.mkdir(parents=True)

    def write(indices):
        images = pipe(prompts(indices), num_inference_steps=steps, guidance_scale=cfg, output_type="pil").images
        for index, image in zip(indices, images):
            image.save(folder / f"{index:08d}.png")

    result = timed(write, n, batch, device, deadline)
    for png in folder.glob("*.png"):
        if int(png.stem) >= n:  # the untimed warm-up batch's files are not evaluated
            png.unlink()
    begin, workers = time.perf_counter(), 0 if device.type == "cpu" else 8
    with GpuMonitor(device) as monitor:
        for role, mode in (("fid", "clean"), ("pr", "legacy_tensorflow")):
            get_folder_features(str(folder), model=extractors[role].model, num_workers=workers, batch_size=batch,
                                device=device, mode=mode, custom_image_tranform=center_crop_to_256, verbose=False)
        files = sorted(folder.glob("*.png"))
        for first in range(0, len(files), batch):
            extractors["clip"].image_features(np.stack([center_crop_to_256(np.asarray(Image.open(f).convert("RGB")))
                                                        for f in files[first:first + batch]]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    features_s = time.perf_counter() - begin
    wall = result["wall_s"] + features_s
    return {**result, "generation_s": result["wall_s"], "features_s": features_s, "wall_s": wall,
            "img_s": result["images"] / wall, "generation_gpu_busy": result["gpu_busy"],
            "gpu_busy": _weighted(result["gpu_busy"], result["wall_s"], monitor.summary()["gpu_busy"], features_s)}


def _weighted(a, wa, b, wb):
    return None if a is None or b is None else (a * wa + b * wb) / (wa + wb)


def center_crop_to_256(image: np.ndarray) -> np.ndarray:
    """GigaGAN's ``custom_image_tranform`` for clean-fid: centre crop and PIL LANCZOS to 256 px (a module-level
    function: clean-fid's data-loader workers receive it)."""
    from PIL import Image

    from bench.protocol import center_crop_resize

    return np.asarray(center_crop_resize(Image.fromarray(image), 256))


def ours_end_to_end(sampler: Sampler, extractors: dict, args, n: int, batch: int, folder: Path,
                    deadline: float) -> dict:
    """Our engine from captions to every image's FID, precision/recall and CLIP features in stored shards, every
    feature worker warmed first (``FeaturePipeline.warm``)."""
    from bench.report import PngWriter

    model = sampler.model
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    pipeline = FeaturePipeline(sampler, to_metric_images, extractors, workers=args.workers)
    shard = -(-args.shard_size // batch) * batch
    store = SampleStore(folder / "store", n, shard, {"bench": "throughput", "spec": model.spec.to_dict()})
    store.claim()
    start = time.perf_counter()
    warm = np.arange(n, n + batch)
    pipeline.run(prompts(warm), warm, batch)  # warm-up: compile, autotune
    pipeline.warm(sampler(prompts(warm), warm)[0])  # ... and every worker thread's first forward
    warmup, done = time.perf_counter() - start, 0
    saver = PngWriter(folder / "png") if args.png else None  # after the warm-up: none of its PNGs
    pipeline.savers = (saver,) if saver else ()
    with GpuMonitor(model.device) as monitor:
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
    result = {"images": done, "wall_s": wall, "warmup_s": warmup, "img_s": done / wall, "batch": batch,
              "truncated": done < n, **monitor.summary()}
    if args.components and time.perf_counter() < deadline:
        result["components_ms_per_image"] = component_times(sampler, extractors, batch,
                                                            reps=3 if n_steps(model) == 1 else 1)
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
        fn()  # untimed: first calls pay for allocation, algorithm search or compilation
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


def check_equivalence(plain_model, fast_sampler: Sampler, inception, clip, args, n: int) -> dict:
    """Plain path (eager, contiguous, fp32 CLIP, sequential) vs the fast path (``fast_sampler``, compiled or not,
    in the FeaturePipeline with the levers), on the same seeds."""
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

    kept = {}  # the fast path's images, through FeaturePipeline's savers hook
    keep = SimpleNamespace(submit=lambda images, idx: kept.__setitem__(int(idx[0]), images.copy()))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    pipeline = FeaturePipeline(fast_sampler, to_metric_images,
                               {"inception": inception, "clip": clip}, (keep,), workers=args.workers)
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
