"""`python -m distill.make_pairs --prompts FILE --n 10000 -o DIR`: (noise, x0) pairs for ``distill.train --real-data``.

DMD's regression loss (Yin et al. 2024, section 3.3; DMD2 drops it, SwiftBrush never used it) pulls the one-step
student's output for a fixed noise towards the teacher's multi-step sample from that same noise. This command
makes those pairs with the bench's engine: pair i has the bench's per-sample noise ``sample_noise(seed, [i])``,
prompt ``i mod len(prompts)`` of the (deduplicated) prompt file, and the teacher's final latent after ``--steps``
steps of the bench's teacher sampler at ``--cfg`` (SD 2.1 at 25 steps, cfg 4.5 by default: the paper's teacher
setting, sampled as the bench's ``sd21-cfg4.5`` row), in the scaled latent space the student predicts in. Nothing is
decoded.

Pairs are written in shards ``pairs-00000.safetensors`` ... (``distill.utils.write_real_pairs``), each under a
temporary name and renamed; ``pairs.json`` records the settings. A killed run resumes at the first missing shard,
and a folder made with other settings is refused rather than mixed.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.errors import UserError, exit_on_user_error
from bench.load import hide_library_progress_bars, load_model
from bench.registry import SD21, SD21_MIRROR, TEACHER_SCHEDULER, ModelSpec
from bench.store import atomic_write_text, changed_settings
from distill.prompts import load_prompts
from distill.utils import write_real_pairs

SETTINGS = "pairs.json"


def shard_name(shard: int) -> str:
    return f"pairs-{shard:05d}.safetensors"


def make_pairs(teacher: str, prompts_file: str, n: int, out: str | Path, steps: int = 25, cfg: float = 4.5,
               seed: int = 0, shard_size: int = 1000, batch_size: int = 16, device: str = "cpu",
               dtype: str | None = None, prompt_column: str | None = None, scheduler: str = TEACHER_SCHEDULER,
               log=print) -> Path:
    """Write the missing shards of ``n`` pairs to ``out``; returns ``out``."""
    from bench.generate import Sampler

    if n < 1 or shard_size < 1 or batch_size < 1 or steps < 1:
        raise UserError(f"--n, --shard-size, --batch-size and --steps must be positive (got {n}, {shard_size}, "
                        f"{batch_size}, {steps})")
    prompts = load_prompts(prompts_file, prompt_column)
    hint = "pass --teacher with a local pipeline folder" + (f" or {SD21_MIRROR}" if teacher == SD21 else "")
    spec = ModelSpec("teacher", teacher, kind="multi-step", steps=steps, guidance_scale=cfg, hint=hint,
                     scheduler=scheduler)
    settings = {"teacher": teacher, "prompts": [len(prompts), prompts[0], prompts[-1]], "n": n, "steps": steps,
                "cfg": cfg, "seed": seed, "shard_size": shard_size, "dtype": dtype, "scheduler": spec.scheduler}
    out = Path(out)
    _check(out, settings)
    shards = [s for s in range(-(-n // shard_size)) if not (out / shard_name(s)).exists()]
    if not shards:
        log(f"{out}: all {n} pairs are there")
        return out
    if not Path(teacher).exists() and teacher.startswith((".", "/", "~")):
        raise UserError(f"--teacher {teacher!r} does not exist: pass a local pipeline folder or an HF id")
    sampler = Sampler(load_model(spec, device=device, dtype=dtype), seed=seed)
    _claim(out, settings)  # after the load: a teacher that fails to load leaves no folder behind
    begin = time.time()
    for shard in shards:
        indices = list(range(shard * shard_size, min(n, (shard + 1) * shard_size)))
        noise, x0, texts = [], [], []
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            texts += [prompts[i % len(prompts)] for i in batch]
            x0.append(sampler.latents(texts[-len(batch):], batch).float().cpu())
            noise.append(sampler.noise(batch).float().cpu())
        x0 = torch.cat(x0)
        if not torch.isfinite(x0).all():
            raise UserError(f"the teacher's samples for pairs {indices[0]}..{indices[-1]} hold NaN/inf: "
                            "run it in float32 (--dtype float32)")
        tmp = out / f".{shard_name(shard)}.{os.getpid()}.tmp"
        write_real_pairs(tmp, torch.cat(noise), x0, texts)
        os.replace(tmp, out / shard_name(shard))
        log(f"{out / shard_name(shard)}: pairs {indices[0]}..{indices[-1]} ({time.time() - begin:.0f} s)")
    return out


def _check(out: Path, settings: dict) -> None:
    """Refuse a folder whose pairs were made with other settings, or that holds files of unknown origin."""
    path = out / SETTINGS
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != settings:
            raise UserError(f"{out} holds pairs made with other settings "
                            f"({', '.join(changed_settings(recorded, settings))} differ): "
                            "pass another -o folder or the same settings")
    elif out.exists() and any(out.glob("*.safetensors")):
        raise UserError(f"{out} already holds .safetensors files but no {SETTINGS}: pass an empty or new -o folder")


def _claim(out: Path, settings: dict) -> None:
    """Record the settings (checked by ``_check``) in the output folder."""
    if (out / SETTINGS).exists():
        return
    atomic_write_text(out / SETTINGS, json.dumps(settings, indent=1))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="distill.make_pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=SD21, help="teacher pipeline: HF id or folder (default: %(default)s)")
    parser.add_argument("--prompts", required=True, help="prompt file: .txt, .jsonl, .csv or .parquet")
    parser.add_argument("--prompt-column", help="column of a jsonl/csv/parquet prompt file")
    parser.add_argument("--n", type=int, required=True, help="number of pairs")
    parser.add_argument("-o", "--out", required=True, help="output folder (resumable)")
    parser.add_argument("--steps", type=int, default=25, help="teacher steps (default: %(default)s)")
    parser.add_argument("--scheduler", default=TEACHER_SCHEDULER,
                        help="the teacher's sampler, a diffusers scheduler class (default: %(default)s, the bench's "
                             "sd21 rows)")
    parser.add_argument("--cfg", type=float, default=4.5, help="teacher guidance scale (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed; pair i's noise is sample_noise(seed, [i])")
    parser.add_argument("--shard-size", type=int, default=1000, help="pairs per file (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="default: the teacher's (fp16)")
    args = parser.parse_args(argv)
    hide_library_progress_bars()
    with exit_on_user_error("distill.make_pairs"):
        return make_pairs(args.teacher, args.prompts, args.n, args.out, steps=args.steps, cfg=args.cfg,
                          seed=args.seed, shard_size=args.shard_size, batch_size=args.batch_size, device=args.device,
                          dtype=args.dtype, prompt_column=args.prompt_column, scheduler=args.scheduler,
                          log=lambda message: print(message, file=sys.stderr))


if __name__ == "__main__":
    main()
