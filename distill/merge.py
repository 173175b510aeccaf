"""`python -m distill.merge A B --lam 0.5 -o OUT`: SwiftBrush v2's weight merging (arXiv 2408.14176, Eq. 6).

    theta = lam * theta_A + (1 - lam) * theta_B

over identical state-dict keys, in float32 arithmetic. A LoRA student is fused into its base first
(the paper interpolates dense weights). lam = 1 and lam = 0 return A and B bit for bit: they are
copied, not computed (in floating point ``1 * a + 0 * b`` turns -0.0 into 0.0 and inf into nan).

Inputs: a diffusers pipeline folder or HF id, a UNet folder, a folder holding ``unet_ema/``
(``distill.train``'s output), or a PEFT LoRA adapter folder whose base is ``--base-a/--base-b`` or
the adapter's ``base_model_name_or_path``. OUT is a UNet folder (safetensors) with ``merge.json``
(parents, lam, config differences that change no computation) and ``bench_base.json``, so ``NAME=OUT`` works
in the bench. It takes A's config; it is written beside OUT and renamed into place, and an existing OUT is
replaced only with ``--overwrite``.
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from bench.errors import UserError, exit_on_user_error
from bench.hashing import folder_sha256
from bench.interpolate import config_differences, merge_unets
from bench.load import fuse_lora, hide_library_progress_bars, load_unet, resolve_layout
from distill.utils import loading


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
            "sha256": folder_sha256(location)}


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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing -o folder (atomically)")
    args = parser.parse_args(argv)
    hide_library_progress_bars()
    with exit_on_user_error("distill.merge"):
        if not 0.0 <= args.lam <= 1.0:
            raise UserError(f"--lam must be in [0, 1], got {args.lam}")
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise UserError(f"-o {out} already exists: pass --overwrite to replace it, or another -o")
        with loading("model A", args.a, "A"):
            unet_a, base_a = load_student(args.a, args.base_a)
        with loading("model B", args.b, "B"):
            unet_b, base_b = load_student(args.b, args.base_b)
        if args.base is None and base_a != base_b:
            raise UserError(f"A's base {base_a!r} and B's base {base_b!r} differ: pass --base for the output")
        try:
            merged = merge_unets(unet_a, unet_b, args.lam)
        except ValueError as error:
            raise UserError(f"cannot merge {args.a} and {args.b}: {error}") from error
        _, other = config_differences(dict(unet_a.config), dict(unet_b.config))
        record = {"formula": "lam * A + (1 - lam) * B", "lam": args.lam, "config": "A's",
                  "config_differences": {key: [unet_a.config.get(key), unet_b.config.get(key)] for key in other},
                  "a": _parent(args.a, base_a), "b": _parent(args.b, base_b)}
        _write_folder(out, merged, args.base or base_a, record)
    print(out)
    return out


def _write_folder(out: Path, merged, base: str, record: dict) -> None:
    """The merged UNet folder, written beside ``out`` and renamed into place: a failed or killed write leaves any
    earlier ``out`` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        (tmp / "bench_base.json").write_text(json.dumps({"base": base}))
        (tmp / "merge.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
