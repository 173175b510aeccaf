"""Weight interpolation of two UNets: SwiftBrush v2's merge (arXiv 2408.14176, Eq. 6).

    theta = lam * theta_A + (1 - lam) * theta_B

over identical state-dict keys, in float32 arithmetic; a LoRA student (``PeftModel``) is fused into its base
first, since the paper interpolates dense weights. ``bench.sweep`` evaluates it in memory over a grid of weights
(Figure 3); ``distill.merge`` writes one merge to disk.
"""

import copy

import torch


def merge_state_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """``lam * a + (1 - lam) * b`` per key, computed in float32; exact copies of a (lam = 1) or b (lam = 0).

    The result keeps the inputs' dtype when they share one, float32 otherwise.
    Raises:
        ValueError: different keys or shapes, or lam outside [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"the two UNets have different weights (only in A: {only_a[:3]}, only in B: {only_b[:3]})")
    merged = {}
    for key, left in a.items():
        right = b[key]
        if left.shape != right.shape:
            raise ValueError(f"the two UNets differ in {key}: shapes {tuple(left.shape)} and {tuple(right.shape)}")
        dtype = left.dtype if left.dtype == right.dtype else torch.float32
        if lam == 1.0 or lam == 0.0:
            merged[key] = (left if lam == 1.0 else right).detach().to(dtype, copy=True)
        elif not left.is_floating_point():
            raise ValueError(f"{key} is not a floating-point tensor ({left.dtype}): cannot interpolate it")
        else:
            merged[key] = (lam * left.detach().float() + (1.0 - lam) * right.detach().float()).to(dtype)
    return merged


def _dense(unet: torch.nn.Module) -> torch.nn.Module:
    """A PEFT-wrapped LoRA student as a plain UNet with the LoRA fused (on a copy)."""
    from peft import PeftModel

    if isinstance(unet, PeftModel):
        return copy.deepcopy(unet).merge_and_unload()
    if any("lora_" in name for name, _ in unet.named_parameters()):
        raise ValueError("the UNet carries LoRA layers that are not a PeftModel: fuse them first (merge_and_unload)")
    return unet


# Config keys that change no computation of a given input: the output takes A's value and the difference is listed.
NOT_STRUCTURAL = {"sample_size"}  # the default generation size, not part of the network


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b or (a in (None, False) and b in (None, False))  # an unset flag: None and False act alike


def config_differences(config_a: dict, config_b: dict) -> tuple[list[str], list[str]]:
    """(structural, other) config keys on which two UNets differ; ``_``-keys (name, version) are ignored."""
    keys = sorted(k for k in {*config_a, *config_b} if not k.startswith("_"))
    different = [k for k in keys if not _same(config_a.get(k), config_b.get(k))]
    return [k for k in different if k not in NOT_STRUCTURAL], [k for k in different if k in NOT_STRUCTURAL]


def merge_unets(unet_a: torch.nn.Module, unet_b: torch.nn.Module, lam: float) -> torch.nn.Module:
    """A new UNet with ``lam * A + (1 - lam) * B`` and A's config; LoRA students (PeftModel) are fused first.

    Compatible means the same state-dict keys and shapes and the same config wherever the config changes the
    computation (``config_differences``); other differences are allowed.

    Raises:
        ValueError: different keys or shapes, or a structural config difference.
    """
    unet_a, unet_b = _dense(unet_a), _dense(unet_b)
    structural, _ = config_differences(dict(unet_a.config), dict(unet_b.config))
    if structural:
        raise ValueError(f"the two UNets have different architectures (config differs in {', '.join(structural[:5])})")
    merged = merge_state_dicts(unet_a.state_dict(), unet_b.state_dict(), lam)
    out, dtype = copy.deepcopy(unet_a), next(iter(merged.values())).dtype
    out = out if out.dtype == dtype else out.to(dtype)
    out.load_state_dict(merged)
    return out
