"""Sampling math shared by the bench and by distillation (one implementation, not two).

SwiftBrush, SwiftBrush v2 and DMD2 all run the student once at the last training timestep
(t = num_train_timesteps - 1 = 999) on pure noise and read the epsilon prediction as

    x0 = (z - sqrt(1 - abar_999) * eps) / sqrt(abar_999)

with abar taken from the scheduler config. abar_999 is about 0.0047, so eps errors are amplified
14.6x: the coefficients are computed in float64 and applied in float32 or wider. A model whose scheduler
config says ``v_prediction`` or ``sample`` is read accordingly (``x0_from_prediction``); a zero-SNR schedule
(``rescale_betas_zero_snr``: abar_999 = 0) leaves an epsilon prediction at t = 999 without an x0 and is refused.

Noise is drawn per sample from CPU generators seeded by (seed, index): the starting noise and, for schedulers
that draw noise at every step (DDPM, Euler ancestral), the step noise too, so batch size, resume and the number of
processes change nothing.
"""

import inspect

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """The float64 cumulative alpha products of a diffusers scheduler config (DDPM-family betas, with the
    zero-terminal-SNR rescale when the config asks for it)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    config = {k: scheduler_config[k] for k in keys if scheduler_config.get(k) is not None}
    betas = DDPMScheduler(**config).betas.double()
    return torch.cumprod(1.0 - betas, dim=0)


def onestep_timestep(scheduler_config: dict) -> int:
    return int(scheduler_config.get("num_train_timesteps", 1000)) - 1


def x0_from_eps(noisy: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor | float) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t), computed in at least float32.

    ``abar_t`` is a float or a per-sample tensor (broadcast over C, H, W).
    """
    dtype = torch.promote_types(noisy.dtype, torch.float32)
    if isinstance(abar_t, torch.Tensor):
        abar = abar_t.to(noisy.device, torch.float64)
    else:  # a fill kernel: as_tensor(float, device=cuda) is a blocking copy that drains the GPU's queue
        abar = torch.full((), abar_t, dtype=torch.float64, device=noisy.device)
    if abar.ndim == 1:
        abar = abar.view(-1, *([1] * (noisy.ndim - 1)))
    alpha, sigma = abar.sqrt().to(dtype), (1 - abar).sqrt().to(dtype)
    return (noisy.to(dtype) - sigma * eps.to(dtype)) / alpha


def x0_from_prediction(noisy: torch.Tensor, prediction: torch.Tensor, abar_t: float,
                       prediction_type: str = "epsilon") -> torch.Tensor:
    """x0 from a UNet output of ``prediction_type`` (diffusers' convention, ``DDPMScheduler.step``):

    - ``epsilon``: (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    - ``v_prediction``: sqrt(abar) x_t - sqrt(1 - abar) v
    - ``sample``: the output itself
    """
    if prediction_type == "epsilon":
        return x0_from_eps(noisy, prediction, abar_t)
    dtype = torch.promote_types(noisy.dtype, torch.float32)
    if prediction_type == "sample":
        return prediction.to(dtype)
    if prediction_type != "v_prediction":
        raise ValueError(f"prediction type {prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}")
    abar = torch.full((), abar_t, dtype=torch.float64, device=noisy.device)
    return abar.sqrt().to(dtype) * noisy.to(dtype) - (1 - abar).sqrt().to(dtype) * prediction.to(dtype)


def check_onestep(prediction_type: str, abar_t: float) -> None:
    """Raise ValueError when a one-step x0 cannot be read exactly from this prediction type at this abar."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    if prediction_type == "epsilon" and not abar_t > 0:
        raise ValueError("the schedule has abar = 0 at the one-step timestep (zero terminal SNR), where an epsilon "
                         "prediction determines no x0")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without stalling: a copy from pageable memory waits for all queued GPU work,
    one from pinned memory is queued behind it (the caching host allocator keeps the buffer until it is done)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index``: a pure function of (seed, index), batch-independent."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_noise(seed: int, indices, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise for the given sample indices, each drawn from its own CPU generator."""
    noises = [torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, int(i)))) for i in indices]
    return torch.stack(noises)


def step_generators(seed: int, indices) -> list[torch.Generator]:
    """One CPU generator per sample for a stochastic scheduler's step noise, seeded by (seed, index) apart from the
    starting noise's."""
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(i), 1]).generate_state(
        1, dtype=np.uint64)[0] >> 1)) for i in indices]


def onestep_x0(unet, noise: torch.Tensor, text_embeddings: torch.Tensor, abar_t: float, timestep: int,
               prediction_type: str = "epsilon") -> torch.Tensor:
    """The one-step student's x0: one UNet call at ``timestep`` on pure noise (gradients flow).

    An 8-channel output (learned variance) keeps its first half, as the official SBv2 code does.
    """
    t = torch.full((noise.shape[0],), timestep, device=noise.device, dtype=torch.long)
    prediction = unet(noise, t, encoder_hidden_states=text_embeddings).sample
    if prediction.shape[1] == 2 * noise.shape[1]:
        prediction = prediction[:, : noise.shape[1]]
    return x0_from_prediction(noise, prediction, abar_t, prediction_type)


def rectified_flow_x0(unet, noise: torch.Tensor, text_embeddings: torch.Tensor, timestep: float = 1000.0,
                      init_sigma: float = 1.0) -> torch.Tensor:
    """One Euler step of a rectified-flow velocity field from t = 1000 (noise) to 0, as InstaFlow's pipeline runs
    with one step (gnobitab/InstaFlow ``code/pipeline_rf.py``, ``RectifiedFlowPipeline.__call__``: latents =
    randn * init_noise_sigma, t = (1 - 0/1) * 1000, dt = 1, latents + dt * v): x0 = s z + v(s z, 1000)."""
    latents = noise * init_sigma
    t = torch.full((noise.shape[0],), float(timestep), device=noise.device)
    velocity = unet(latents, t, encoder_hidden_states=text_embeddings).sample
    dtype = torch.promote_types(noise.dtype, torch.float32)
    return latents.to(dtype) + velocity.to(dtype)


def draws_step_noise(scheduler) -> bool:
    """Whether a scheduler's ``step`` takes a generator (DDPM, Euler ancestral, ...: it may draw noise)."""
    return "generator" in inspect.signature(scheduler.step).parameters


@torch.no_grad()
def denoise(unet, scheduler, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
            steps: int, guidance_scale: float, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Multi-step sampling exactly as ``StableDiffusionPipeline`` runs it (eta = 0, cfg batched).

    cond and uncond go through the UNet in one batch, uncond first, as diffusers does; guidance
    applies when ``guidance_scale > 1``, diffusers' own rule. ``generators`` (one per sample) feed the step noise
    of schedulers that draw it; the scheduler's config decides the prediction type.
    """
    extra = {"generator": generators} if generators is not None and draws_step_noise(scheduler) else {}
    do_cfg = guidance_scale > 1.0
    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    embeddings = torch.cat([uncond, cond]) if do_cfg else cond
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        eps = unet(model_input, t, encoder_hidden_states=embeddings).sample
        if do_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
    return latents
