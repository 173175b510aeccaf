"""The generation engine: prompts and sample indices in, uint8 images out.

Sample i is a pure function of (model, prompt i, seed, i): its noise comes from its own generator
(``bench.sampling.sample_noise``), so batch size, resume and the number of GPUs change nothing.
"""

import numpy as np
import torch

from bench.load import LoadedModel, encode_prompts
from bench.sampling import alphas_cumprod, denoise, onestep_timestep, onestep_x0, sample_noise


class Sampler:
    """Runs one loaded model: ``sampler(prompts, indices) -> (uint8 NHWC images, finite mask)``."""

    def __init__(self, model: LoadedModel, seed: int = 0, compile: bool = False):
        self.model, self.seed = model, seed
        spec = model.spec
        self.timestep = spec.timestep if spec.timestep is not None else onestep_timestep(model.scheduler_config)
        self.abar = float(alphas_cumprod(model.scheduler_config)[self.timestep])
        self.scheduler = None
        if spec.kind == "multi-step":
            import diffusers

            name = spec.scheduler or model.scheduler_config.get("_class_name", "DDIMScheduler")
            self.scheduler = getattr(diffusers, name).from_config(model.scheduler_config)
        self.unet, self.decode = model.unet, model.vae.decode
        if compile:
            # The first batch pays the compile (tens of seconds on SD 2.1); shapes are static afterwards.
            self.unet = torch.compile(model.unet)
            self.decode = torch.compile(model.vae.decode)
        self._uncond = None

    def _uncond_embedding(self, batch: int) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = encode_prompts(self.model.tokenizer, self.model.text_encoder, [""])
        return self._uncond.expand(batch, -1, -1)

    @torch.no_grad()
    def latents(self, prompts: list[str], indices) -> torch.Tensor:
        model, spec = self.model, self.model.spec
        # 1. Text conditioning, exactly as StableDiffusionPipeline encodes it for SD 2.x.
        cond = encode_prompts(model.tokenizer, model.text_encoder, prompts)
        # 2. Per-sample noise, drawn on the CPU so that every device and batch size agree.
        noise = sample_noise(self.seed, indices, model.latent_shape).to(model.device, model.dtype)
        # 3. One UNet call at t = 999 and the x0 conversion, or the multi-step cfg loop.
        if spec.kind == "one-step":
            return onestep_x0(self.unet, noise, cond, self.abar, self.timestep)
        return denoise(self.unet, self.scheduler, noise, cond, self._uncond_embedding(len(prompts)),
                       spec.steps, spec.guidance_scale)

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
