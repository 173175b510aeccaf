"""The generation engine: prompts and sample indices in, uint8 images out.

Sample i is a pure function of (model, prompt i, seed, i): its noise comes from its own generator
(``bench.sampling.sample_noise``, and ``step_generators`` for schedulers that draw step noise), so resume and the
number of GPUs change nothing (batches never straddle shards), and batch size and CPU thread count only move
floating-point rounding.
"""

import dataclasses
import inspect
import threading
import warnings
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bench.errors import UserError
from bench.load import LoadedModel, encode_prompts
from bench.sampling import (
    alphas_cumprod,
    check_onestep,
    denoise,
    draws_step_noise,
    onestep_timestep,
    onestep_x0,
    rectified_flow_x0,
    sample_noise,
    step_generators,
    to_device,
)

CACHED_CAPTIONS = 4096  # 0.65 GB of SD 2.1 fp16 conditioning at most


class Sampler:
    """Runs one loaded model: ``sampler(prompts, indices) -> (uint8 NHWC images, finite mask)``.

    The scheduler class is the spec's (a registry entry pins the paper's sampler) or the model folder's; its
    config decides the prediction type. A scheduler that draws step noise gets per-sample generators; one that
    draws noise without taking a generator cannot be sampled reproducibly and is refused.
    """

    def __init__(self, model: LoadedModel, seed: int = 0, compile: bool = False):
        self.model, self.seed = model, seed
        spec, config = model.spec, model.scheduler_config
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.timestep = spec.timestep if spec.timestep is not None else onestep_timestep(config)
        self.scheduler, self.init_sigma, self.abar = None, 1.0, None
        if spec.kind == "one-step":
            self.abar = spec.abar if spec.abar is not None else float(alphas_cumprod(config)[self.timestep])
            try:
                check_onestep(self.prediction_type, self.abar)
            except ValueError as error:
                raise UserError(f"model {spec.name!r} cannot be sampled in one step: {error}") from None
        elif spec.kind == "rectified-flow":  # the pipeline scales the starting noise as its scheduler says
            self.init_sigma = float(_scheduler(dataclasses.replace(spec, scheduler=None), config).init_noise_sigma)
        else:
            self.scheduler = _scheduler(spec, config)
        self.unet, self.decode = model.unet, model.vae.decode
        if compile:
            # The first batch pays the compile (tens of seconds on SD 2.1); shapes are static afterwards.
            self.unet = Compiled(model.unet, "UNet")
            self.decode = Compiled(model.vae.decode, "VAE decoder")
        self._uncond = None
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()

    def describe(self) -> dict:
        """What decides the samples besides weights, seed and captions (stored in the store's key and the card)."""
        spec = self.model.spec
        if spec.kind == "one-step":
            return {"kind": "one-step", "timestep": self.timestep, "abar": round(self.abar, 12),
                    "prediction_type": self.prediction_type}
        if spec.kind == "rectified-flow":
            return {"kind": "rectified-flow", "timestep": self.timestep, "init_sigma": self.init_sigma}
        return {"kind": "multi-step", "scheduler": type(self.scheduler).__name__, "steps": spec.steps,
                "guidance_scale": spec.guidance_scale, "prediction_type": self.prediction_type,
                "timestep_spacing": self.scheduler.config.get("timestep_spacing")}

    def _uncond_embedding(self, batch: int) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = encode_prompts(self.model.tokenizer, self.model.text_encoder, [""])
        return self._uncond.expand(batch, -1, -1)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """The prompts' conditioning, each caption encoded once while it stays among the ``CACHED_CAPTIONS`` most
        recent (the diversity samples, a sweep's points and the demo's ten prompts repeat theirs)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._embeddings))
        if missing:
            encoded = encode_prompts(self.model.tokenizer, self.model.text_encoder, missing)
            self._embeddings.update(zip(missing, encoded))
        for prompt in prompts:
            self._embeddings.move_to_end(prompt)
        rows = torch.stack([self._embeddings[p] for p in prompts])
        while len(self._embeddings) > CACHED_CAPTIONS:
            self._embeddings.popitem(last=False)
        return rows

    def noise(self, indices) -> torch.Tensor:
        """The starting noise of samples ``indices``, drawn on the CPU so that every device and batch size agree."""
        noise = sample_noise(self.seed, indices, self.model.latent_shape)
        return to_device(noise, self.model.device).to(self.model.dtype)

    @torch.no_grad()
    def latents(self, prompts: list[str], indices) -> torch.Tensor:
        spec = self.model.spec
        # 1. Text conditioning, exactly as StableDiffusionPipeline encodes it.
        cond = self.encode(prompts)
        # 2. Per-sample noise (``noise``).
        noise = self.noise(indices)
        # 3. One UNet call at t = 999 and the x0 conversion, or the multi-step cfg loop.
        if spec.kind == "one-step":
            return onestep_x0(self.unet, noise, cond, self.abar, self.timestep, self.prediction_type)
        if spec.kind == "rectified-flow":
            return rectified_flow_x0(self.unet, noise, cond, self.timestep, self.init_sigma)
        generators = step_generators(self.seed, indices) if draws_step_noise(self.scheduler) else None
        return denoise(self.unet, self.scheduler, noise, cond, self._uncond_embedding(len(prompts)),
                       spec.steps, spec.guidance_scale, generators)

    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.model.vae
        pixels = self.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float()
        finite = torch.isfinite(pixels).flatten(1).all(dim=1)
        pixels = torch.where(finite.view(-1, 1, 1, 1), pixels, torch.zeros_like(pixels))
        # (x + 1) / 2, then torchvision.save_image's rounding: the official SBv2 PNGs are made this way.
        images = ((pixels + 1) / 2).clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
        return images.permute(0, 2, 3, 1), finite

    def __call__(self, prompts: list[str], indices) -> tuple[np.ndarray, np.ndarray]:
        images, finite = self.decode_images(self.latents(prompts, indices))
        return images.cpu().numpy(), finite.cpu().numpy()


class Compiled:
    """``torch.compile(fn)``, falling back to ``fn`` with one warning when compiling fails (an unsupported
    operator or platform): a run is never lost to the optimisation."""

    def __init__(self, fn, what: str):
        self.fn, self.what, self.compiled = fn, what, torch.compile(fn, dynamic=False)

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # torch._dynamo / inductor raise many types; eager is always correct
            warnings.warn(f"torch.compile of the {self.what} failed ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:160] if str(error) else ''}); running it eagerly",
                          stacklevel=2)
            self.compiled = None
            return self.fn(*args, **kwargs)


# How Stable Diffusion's folders ship these samplers (SD 2.1-base's scheduler_config.json: PNDM with PLMS only),
# applied when a spec names one over a folder whose own scheduler is another.
SHIPPED_SETTINGS = {"PNDMScheduler": {"skip_prk_steps": True}}


def _scheduler(spec, config: dict):
    """The multi-step scheduler of a spec, built from the model's scheduler config; one line when it cannot be."""
    import diffusers

    name = spec.scheduler or config.get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "step"):
        raise UserError(f"model {spec.name!r}: unknown scheduler {name!r}; name a diffusers scheduler class "
                        "(e.g. PNDMScheduler, DDIMScheduler) in its scheduler_config.json")
    if name != config.get("_class_name"):  # a named sampler over another's config takes Stable Diffusion's settings
        config = {**config, **SHIPPED_SETTINGS.get(name, {})}
    scheduler = cls.from_config(config)
    source = inspect.getsource(cls.step)
    if not draws_step_noise(scheduler) and ("randn" in source or "noise_sampler" in source):
        raise UserError(f"model {spec.name!r}: {name} draws noise without a generator, so its samples would depend "
                        "on batch size and process count; use a deterministic or generator-taking scheduler "
                        "(e.g. DDIMScheduler, DDPMScheduler)")
    return scheduler


class FeaturePipeline:
    """Generation on the calling thread; copy-out, resize, PNG hand-off and feature extraction on workers.

    The GPU never waits for the CPU: each batch is copied into pinned memory without a sync, a CUDA
    event marks when the copy is done, and a worker thread takes it from there (PIL releases the GIL in
    decode and resize). The workers' GPU work runs on a stream of its own, so their blocking input copies
    wait for earlier feature work only, never for the generation queued on the default stream. At most
    ``max_inflight`` batches wait, which bounds host memory.
    """

    def __init__(self, sampler: Sampler, to_metric_images, extractors: dict, savers=(), workers: int = 4,
                 max_inflight: int = 4):
        self.sampler, self.to_metric_images, self.extractors = sampler, to_metric_images, extractors
        self.savers = tuple(savers)  # each gets ``submit(images, indices)`` (PNGs, gallery thumbnails)
        self.pool = ThreadPoolExecutor(workers)
        self.max_inflight = max_inflight
        self.cuda = sampler.model.device.type == "cuda"
        self.feature_stream = torch.cuda.Stream(sampler.model.device) if self.cuda else None

    def warm(self, images: np.ndarray) -> None:
        """Run every extractor once on every worker thread (untimed): a thread's first forward pays for its cuDNN
        handle and algorithm search, which would otherwise land inside the first timed shards."""
        if not self.cuda:
            return
        workers = self.pool._max_workers
        together = threading.Barrier(workers)

        def once():
            self._features(self.to_metric_images(images))
            together.wait(timeout=600)  # every worker holds one job until all have run theirs

        for future in [self.pool.submit(once) for _ in range(workers)]:
            future.result()

    def _features(self, metric_images: np.ndarray) -> dict:
        with torch.cuda.stream(self.feature_stream):  # None (a CPU run): no-op
            return {role: e.image_features(metric_images) for role, e in self.extractors.items()}

    def _post(self, images: torch.Tensor, finite: torch.Tensor, indices, done_event) -> dict:
        if done_event is not None:
            done_event.synchronize()
        images, finite = images.numpy(), finite.numpy()
        for saver in self.savers:
            saver.submit(images, indices)
        return {"finite": finite, **self._features(self.to_metric_images(images))}

    def _hand_off(self, images: torch.Tensor, finite: torch.Tensor, indices):
        if not self.cuda:
            return self.pool.submit(self._post, images.cpu(), finite.cpu(), indices, None)
        host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
        host_finite = torch.empty(finite.shape, dtype=finite.dtype, pin_memory=True)
        host.copy_(images, non_blocking=True)
        host_finite.copy_(finite, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(images.device))  # the images' device, whatever the current one is
        return self.pool.submit(self._post, host, host_finite, indices, event)

    def run(self, prompts: list[str], indices, batch_size: int, progress=None) -> dict[str, np.ndarray]:
        """Features (per extractor role) and the finite mask of ``indices``, in order."""
        return next(self.run_shards([(None, prompts, indices)], batch_size, progress))[1]

    def run_shards(self, shards, batch_size: int, progress=None):
        """For each non-empty ``(key, prompts, indices)`` of ``shards``, in order: yields ``(key, arrays)`` as
        ``run`` returns them. The next shard's batches are generated while the workers finish the last ones of
        the shard before, so the GPU does not idle at shard boundaries."""
        futures, parts, left = deque(), {}, {}

        def finish():
            key, future, count = futures.popleft()
            parts[key].append(future.result())
            if progress is not None:
                progress(count)
            left[key] -= 1
            if left[key] == 0:
                done = parts.pop(key)
                return key, {name: np.concatenate([part[name] for part in done]) for name in done[0]}
            return None

        try:
            for key, prompts, indices in shards:
                starts = range(0, len(indices), batch_size)
                parts[key], left[key] = [], len(starts)
                for start in starts:
                    batch = indices[start:start + batch_size]
                    with torch.no_grad():
                        latents = self.sampler.latents(prompts[start:start + batch_size], batch)
                        images, finite = self.sampler.decode_images(latents)
                    futures.append((key, self._hand_off(images.contiguous(), finite, batch), len(batch)))
                    while len(futures) > self.max_inflight or (futures and futures[0][1].done()):
                        if (finished := finish()) is not None:
                            yield finished
            while futures:
                if (finished := finish()) is not None:
                    yield finished
        finally:  # a consumer that stops early leaves no worker running
            for _, future, _ in futures:
                future.cancel()
            for _, future, _ in futures:
                if not future.cancelled():
                    future.exception()

    def close(self) -> None:
        self.pool.shutdown()
