"""`python -m distill.merge A B --lam 0.5 -o OUT`: SwiftBrush v2's weight merging (arXiv 2408.14176, Eq. 6).

    theta = lam * theta_A + (1 - lam) * theta_B

over identical state-dict keys, in float32 arithmetic. A LoRA student is fused into its base first
(the paper interpolates dense weights). lam = 1 and lam = 0 return A and B bit for bit: they are
copied, not computed (in floating point ``1 * a + 0 * b`` turns -0.0 into 0.0 and inf into nan).

Inputs: a diffusers pipeline folder or HF id, a UNet folder, a folder holding ``unet_ema/``
(``distill.train``'s output), or a PEFT LoRA adapter folder whose base is ``--base-a/--base-b`` or
the adapter's ``base_model_name_or_path``. OUT is a UNet folder (safetensors) with ``merge.json``
(parents, lam) and ``bench_base.json``, so ``NAME=OUT`` works in the bench.
"""

import argparse
import copy
import json
from pathlib import Path

import torch

from bench.errors import UserError, exit_on_user_error
from bench.load import fuse_lora, hide_library_progress_bars, load_unet, resolve_layout, weights_sha256


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


def _architecture(unet) -> dict:
    return {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}


def merge_unets(unet_a: torch.nn.Module, unet_b: torch.nn.Module, lam: float) -> torch.nn.Module:
    """A new UNet with ``lam * A + (1 - lam) * B``; LoRA students (PeftModel) are fused first.

    Raises:
        ValueError: different architectures (configs), keys or shapes.
    """
    unet_a, unet_b = _dense(unet_a), _dense(unet_b)
    if _architecture(unet_a) != _architecture(unet_b):
        diff = sorted(k for k in _architecture(unet_a) if _architecture(unet_a)[k] != _architecture(unet_b).get(k))
        raise ValueError(f"the two UNets have different architectures (config differs in {', '.join(diff[:5])})")
    merged = merge_state_dicts(unet_a.state_dict(), unet_b.state_dict(), lam)
    out = copy.deepcopy(unet_a).to(next(iter(merged.values())).dtype)
    out.load_state_dict(merged)
    return out


def load_student(location: str, base: str | None = None) -> tuple[torch.nn.Module, str]:
    """(dense UNet in float32, its bench base) from any accepted layout or a LoRA adapter folder + base."""
    path = Path(location)
    if (path / "adapter_config.json").exists():
        recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base = base or recorded
        if not base:
            raise UserError(f"{location} is a LoRA adapter without a recorded base: pass --base-a/--base-b")
        unet_location, subfolder, bench_base = resolve_layout(base)
        return fuse_lora(load_unet(unet_location, subfolder), location), bench_base
    unet_location, subfolder, bench_base = resolve_layout(location, base)
    return load_unet(unet_location, subfolder), bench_base


def _parent(location: str, base: str) -> dict:
    return {"location": str(Path(location).resolve()) if Path(location).exists() else location, "base": base,
            "sha256": weights_sha256(location)}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="distill.merge", description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m distill.merge results/model-a results/model-b "
                                            "--lam 0.5 -o results/merged")
    parser.add_argument("a", help="model A (weight lam): UNet / pipeline / unet_ema folder, HF id, or LoRA adapter")
    parser.add_argument("b", help="model B (weight 1 - lam), same choices")
    parser.add_argument("--lam", type=float, default=0.5, help="weight of A, in [0, 1] (default: %(default)s)")
    parser.add_argument("-o", "--out", required=True, help="output UNet folder")
    parser.add_argument("--base-a", help="base of A when A is a LoRA adapter (or to override its bench base)")
    parser.add_argument("--base-b", help="base of B, likewise")
    parser.add_argument("--base", help="bench_base.json of the output (default: A's base; needed if A's and B's "
                                       "differ)")
    args = parser.parse_args(argv)
    hide_library_progress_bars()
    with exit_on_user_error("distill.merge"):
        if not 0.0 <= args.lam <= 1.0:
            raise UserError(f"--lam must be in [0, 1], got {args.lam}")
        unet_a, base_a = load_student(args.a, args.base_a)
        unet_b, base_b = load_student(args.b, args.base_b)
        if args.base is None and base_a != base_b:
            raise UserError(f"A's base {base_a!r} and B's base {base_b!r} differ: pass --base for the output")
        try:
            merged = merge_unets(unet_a, unet_b, args.lam)
        except ValueError as error:
            raise UserError(f"cannot merge {args.a} and {args.b}: {error}") from error
        out = Path(args.out)
        merged.save_pretrained(out, safe_serialization=True)
        base = args.base or base_a
        (out / "bench_base.json").write_text(json.dumps({"base": base}))
        record = {"formula": "lam * A + (1 - lam) * B", "lam": args.lam,
                  "a": _parent(args.a, base_a), "b": _parent(args.b, base_b)}
        (out / "merge.json").write_text(json.dumps(record, indent=1))
    print(out)
    return out


if __name__ == "__main__":
    main()
