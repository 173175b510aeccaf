"""Variational score distillation (VSD) losses on tensors: the student's loss and the fake teacher's.

Follows SwiftBrush (VinAIResearch/SwiftBrush ``train_swiftbrush.py``), with DMD2's choices as options
(tianweiy/DMD2 ``main/sd_guidance.py``); ``docs/distill.md`` compares the two.

Student step, for the student's one-step sample x0 (``bench.sampling.onestep_x0``):

    t ~ U{20..980},  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n          (DDPM add_noise, float64 abar)
    g = nan_to_num(w(t) (eps_real - eps_fake)),  w(t) = sigma_t^2 = 1 - abar_t    (SwiftBrush)
    g = nan_to_num((x0_fake - x0_real) / mean|x0 - x0_real|)                     (DMD2, ``normalize=True``)
    loss = 0.5 * mean((x0 - sg(x0 - g))^2)

The mean runs over every element (SwiftBrush's ``F.mse_loss(..., reduction="mean")``), so the
gradient reaching x0 is ``g / x0.numel()``: the loss is scale-free in batch size and resolution, and
Adam ignores the constant. Descending it moves x0 toward the real teacher and away from the fake.

Fake-teacher step: plain eps-MSE at t ~ U{0..999} on the *detached* student sample, each prompt
replaced by the empty prompt with probability 0.1 (SwiftBrush drops the whole batch at once and
weights by abar_t; DMD2 uses the plain MSE, as here).

The UNets enter as ``eps_fn(x_t, t, embeddings) -> eps`` callables, so the same functions serve a
LoRA fake teacher sharing the teacher's weights, a full-copy fake, and test doubles.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.sampling import x0_from_eps

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

VSD_T_RANGE = (20, 980)  # randint(20, 981) in SwiftBrush and DMD2
FAKE_T_RANGE = (0, 999)
NULL_PROMPT_P = 0.1


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


def _wide(tensor: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs: loss arithmetic never runs in half precision."""
    return torch.promote_types(tensor.dtype, torch.float32)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """DDPM forward process ``sqrt(abar) x0 + sqrt(1 - abar) n`` with float64 per-sample coefficients."""
    abar = _per_sample(abar_t.to(device=x0.device, dtype=torch.float64), x0)
    dtype = _wide(x0)
    return abar.sqrt().to(dtype) * x0.to(dtype) + (1 - abar).sqrt().to(dtype) * noise.to(dtype)


def eps_from_prediction(prediction: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor,
                        prediction_type: str = "epsilon") -> torch.Tensor:
    """A UNet output as eps: ``epsilon`` as is, ``v_prediction`` as ``sqrt(abar) v + sqrt(1 - abar) x_t``."""
    if prediction_type == "epsilon":
        return prediction
    if prediction_type != "v_prediction":
        raise ValueError(f"prediction type {prediction_type!r}: only 'epsilon' and 'v_prediction' teachers work")
    abar = _per_sample(abar_t.to(device=x_t.device, dtype=torch.float64), x_t)
    return abar.sqrt().float() * prediction.float() + (1 - abar).sqrt().float() * x_t.float()


def guided_eps(eps_fn: EpsFn, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               scale: float) -> torch.Tensor:
    """Classifier-free guided eps, cond and uncond batched in one forward (uncond first, as diffusers does).

    ``scale == 1`` is the plain conditional prediction (one forward at the batch size).
    """
    if scale == 1.0:
        return eps_fn(x_t, t, cond).to(_wide(x_t))
    uncond = uncond.expand(cond.shape[0], *uncond.shape[1:]).to(cond.dtype)
    eps = eps_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])).to(_wide(x_t))
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def vsd_gradient(x0: torch.Tensor, x_t: torch.Tensor, eps_real: torch.Tensor, eps_fake: torch.Tensor,
                 abar_t: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """The VSD update direction g for x0 (descent moves x0 by -g): see the module docstring."""
    abar, dtype = _per_sample(abar_t.to(device=x0.device, dtype=torch.float64), x0), _wide(x0)
    if not normalize:
        grad = (1 - abar).to(dtype) * (eps_real.to(dtype) - eps_fake.to(dtype))
    else:
        x0_real, x0_fake = x0_from_eps(x_t, eps_real, abar_t), x0_from_eps(x_t, eps_fake, abar_t)
        scale = (x0.to(dtype) - x0_real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
        grad = (x0_fake - x0_real) / scale
    return torch.nan_to_num(grad)


def stopgrad_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean((x0 - sg(x0 - g))^2)``: its gradient on x0 is ``g / x0.numel()``.

    Up to rounding: ``x0 - (x0 - g)`` is g within one ulp of x0 (float32 here, float64 for float64 x0).
    """
    x0 = x0.to(_wide(x0))
    return 0.5 * F.mse_loss(x0, (x0 - grad.to(x0.dtype)).detach(), reduction="mean")


def vsd_loss(x0: torch.Tensor, real_eps: EpsFn, fake_eps: EpsFn, cond: torch.Tensor, uncond: torch.Tensor,
             alphas_cumprod: torch.Tensor, teacher_cfg: float = 4.5, fake_cfg: float | None = None,
             normalize: bool = False, t_range: tuple[int, int] = VSD_T_RANGE, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The student's VSD loss on its one-step samples ``x0`` (gradients flow to x0 only).

    Args:
        x0: the student's samples (B, C, H, W), attached to the student's graph.
        real_eps, fake_eps: ``(x_t, t, embeddings) -> eps`` of the frozen teacher and the fake teacher.
        cond, uncond: prompt embeddings (B, L, D) and the empty prompt's (1, L, D).
        alphas_cumprod: the teacher's float64 schedule (``bench.sampling.alphas_cumprod``).
        teacher_cfg: guidance of the real teacher (SwiftBrush 4.5).
        fake_cfg: guidance of the fake teacher; None means the teacher's (SwiftBrush), DMD2 uses 1.
        normalize: DMD2's x0-space difference divided by the per-sample mean |x0 - x0_real|.
        t_range: inclusive timestep range; ``t`` / ``noise`` fix the draws (tests).
    Returns:
        The scalar loss and float diagnostics (``g_norm``: mean per-sample L2 norm of g, etc.).
    """
    batch = x0.shape[0]
    if t is None:
        t = torch.randint(t_range[0], t_range[1] + 1, (batch,), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0, dtype=_wide(x0))
    abar_t = alphas_cumprod.to(x0.device)[t]
    with torch.no_grad():
        sample = x0.detach().to(_wide(x0))
        x_t = add_noise(sample, noise, abar_t)
        eps_real = guided_eps(real_eps, x_t, t, cond, uncond, teacher_cfg)
        eps_fake = guided_eps(fake_eps, x_t, t, cond, uncond, teacher_cfg if fake_cfg is None else fake_cfg)
        grad = vsd_gradient(sample, x_t, eps_real, eps_fake, abar_t, normalize)
    loss = stopgrad_loss(x0, grad)
    diagnostics = {
        "g_norm": grad.flatten(1).norm(dim=1).mean().item(),
        "g_abs_mean": grad.abs().mean().item(),
        "eps_diff_abs_mean": (eps_real - eps_fake).abs().mean().item(),
        "x0_std": sample.std().item(),
        "x0_abs_max": sample.abs().max().item(),
    }
    return loss, diagnostics


def fake_loss(fake_eps: EpsFn, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
              alphas_cumprod: torch.Tensor, null_prompt_p: float = NULL_PROMPT_P,
              t_range: tuple[int, int] = FAKE_T_RANGE, t: torch.Tensor | None = None,
              noise: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
    """The fake teacher's denoising loss: plain eps-MSE on the detached student samples.

    Each sample's prompt becomes the empty prompt with probability ``null_prompt_p`` (``drop`` fixes
    the draw), so the fake teacher also learns the unconditional score that its CFG needs.
    """
    x0 = x0.detach().to(_wide(x0))
    batch = x0.shape[0]
    if t is None:
        t = torch.randint(t_range[0], t_range[1] + 1, (batch,), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    if drop is None:
        drop = torch.rand(batch, device=x0.device) < null_prompt_p
    embeddings = torch.where(_per_sample(drop, cond), uncond.to(cond.dtype).expand_as(cond), cond)
    x_t = add_noise(x0, noise, alphas_cumprod.to(x0.device)[t])
    return F.mse_loss(fake_eps(x_t, t, embeddings).float(), noise, reduction="mean")
