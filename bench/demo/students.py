"""The demo world's SwiftBrush v2 students, distilled by ``distill.train`` and merged by ``distill.merge``.

| name | what | stands in for |
|---|---|---|
| demo-vsd-full | VSD, all UNet weights, from the teacher's one-step init (no CLIP loss) | model A (SBv1 init) |
| demo-vsd-lora-clip | VSD + clamped CLIP-stand-in loss, LoRA student, from demo-turbo | model B (SD-Turbo init) |
| demo-merged | ``distill.merge`` of the two at lambda = 0.5 (0.5 A + 0.5 B) | SwiftBrush v2 |

Both use DMD2's two-timescale VSD (a full-copy fake teacher updated 5 times per student update, the x0-space
gradient normalisation, real-teacher guidance 2); model B adds a LoRA student and the clamped CLIP loss on
``demo-contrastive-loss``, with tau at a quantile of the init's own cosines so that the clamp bites. Why these
settings, and what they measured: ``docs/demo.md``.

Layout of ``<world root>/students``::

    prompts.txt        the ten training prompts
    vsd-full/          distill.train output: unet_ema/ (the EMA student, what the bench loads), unet/, ...
    vsd-lora-clip/     the same, plus unet_lora/ (the raw PEFT adapter); unet_ema/ is the EMA of the fused weights
    merged/            a UNet folder, merge.json (parents, lambda) and bench_base.json

Each folder gets ``bench_demo.json`` last (its settings key, timings and training summary), so a second call
trains nothing and other settings are refused, as for the world. A run that is killed resumes from its last
checkpoint (``.<name>.partial/``). When there are two cores, the first part of demo-turbo's pairs
(``TURBO_PAIRS_FIRST``) is made on both, then model A trains (one thread) while this process makes the other pairs
and trains demo-turbo, and then model B starts beside A; on one core they run one after the other.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from bench.processes import one_thread_environment

MERGE_LAMBDA = 0.5
TAU_QUANTILE = 0.25  # the clamp sits at this quantile of the init's cosines under the loss model
# The share of demo-turbo's pairs made on both cores before model A starts: it evens out model A's path and the
# path of the other pairs, the regression and model B (docs/demo.md, "Threads and timing").
TURBO_PAIRS_FIRST = 0.5
TAU_SEED = 777  # noise seed of the samples that place tau (not the evaluation's seed 0)
TAU_SAMPLES_PER_PROMPT = 100

# Shared by both students: DMD2-style VSD (full fake, 5:1 updates, x0-space normalisation), real cfg 2.
_VSD = dict(fake="full", fake_updates=5, normalize_grad=True, teacher_cfg=2.0, fake_cfg=1.0, fake_lr=1e-4,
            batch_size=32, ema_decay=0.99, weight_decay=0.0, max_grad_norm=1.0, seed=0)


@dataclass(frozen=True)
class DemoStudents:
    root: Path
    prompts: Path
    vsd_full: Path
    vsd_lora_clip: Path
    merged: Path


def student_paths(world_root: str | Path = "results/demo") -> DemoStudents:
    """Where the students of the world in ``world_root`` live (nothing is checked or trained)."""
    root = Path(world_root) / "students"
    return DemoStudents(root=root, prompts=root / "prompts.txt", vsd_full=root / "vsd-full",
                        vsd_lora_clip=root / "vsd-lora-clip", merged=root / "merged")


# --- settings ------------------------------------------------------------------------------------------------


def full_options(quick: bool = False) -> dict:
    """``distill.train`` options of model A (beside the paths), as TrainConfig field names."""
    options = dict(_VSD, scheme="full", lr=3e-5, max_steps=320, clip_weight=0.0)
    return dict(options, max_steps=3, batch_size=16, fake_updates=2) if quick else options


def lora_options(quick: bool = False) -> dict:
    """Model B: a LoRA student (attention, resnet convs, projections, feed-forward) + clamped CLIP stand-in."""
    options = dict(_VSD, scheme="lora", lr=5e-5, max_steps=50, student_rank=16, student_alpha=16,
                   student_targets="to_q,to_k,to_v,to_out.0,conv1,conv2,proj_in,proj_out,ff.net.0.proj,ff.net.2",
                   clip_weight=0.1, clip_weight_end=0.0, decoder="vae",
                   clip_model="bench.demo.extractors:DemoContrastiveExtractor")
    return dict(options, max_steps=3, batch_size=16, fake_updates=2) if quick else options


# --- helpers -------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    from bench.demo.teacher import log_stderr

    log_stderr(message)


def _unet_file(folder: Path) -> Path:
    for sub in ("unet_ema", "unet", "."):
        if (folder / sub / "diffusion_pytorch_model.safetensors").exists():
            return folder / sub / "diffusion_pytorch_model.safetensors"
    raise FileNotFoundError(f"no UNet weights under {folder}")


def _finish(tmp: Path, final: Path, key: dict, record: dict) -> None:
    from bench.demo.teacher import MARKER
    from bench.demo.world import install_folder

    (tmp / MARKER).write_text(json.dumps({"key": key, **record}, indent=2) + "\n")
    install_folder(tmp, final)


def _argv(options: dict) -> list[str]:
    """TrainConfig fields -> ``distill.train`` command-line options (booleans as --flag / --no-flag)."""
    argv = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            argv += [flag, str(value)]
    return argv


@dataclass
class _Job:
    name: str
    final: Path
    partial: Path
    key: dict
    argv: list[str]
    record: dict
    process: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None


def _start(job: _Job) -> None:
    """Launch ``python -m distill.train`` on one thread; a partial run with the same key resumes."""
    if job.partial.exists() and (_marker_partial(job.partial) != job.key):
        shutil.rmtree(job.partial)
    job.partial.mkdir(parents=True, exist_ok=True)
    (job.partial / "partial_key.json").write_text(json.dumps(job.key, sort_keys=True))
    env = {**one_thread_environment(), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "distill.train", *job.argv, "--out", str(job.partial), "--resume", "latest"]
    job.started = time.time()
    with open(job.partial / "train.log", "a") as log, open(job.partial / "summary.json", "w") as out:
        job.process = subprocess.Popen(command, stdout=out, stderr=log, env=env)  # relative paths: caller cwd
    threading.Thread(target=_note_end, args=(job,), daemon=True).start()
    _log(f"training {job.name} ({job.record['options']['max_steps']} steps) -> {job.final} "
         f"(log: {job.partial / 'train.log'})")


def _note_end(job: _Job) -> None:
    """The job's own end (its wall time), also while this process is busy with something else."""
    job.process.wait()
    job.ended = time.time()


def _marker_partial(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "partial_key.json").read_text())
    except (OSError, ValueError):
        return None


def _wait(job: _Job) -> None:
    code = job.process.wait()
    seconds = (job.ended or time.time()) - job.started
    if code != 0:
        tail = (job.partial / "train.log").read_text()[-2000:]
        raise RuntimeError(f"distill.train for {job.name} failed (exit {code}); the end of its log:\n{tail}")
    summary = json.loads((job.partial / "summary.json").read_text().strip().splitlines()[-1])
    shutil.rmtree(job.partial / "checkpoints", ignore_errors=True)  # resume state only: ~50 MB per student
    for name in ("summary.json", "partial_key.json"):
        (job.partial / name).unlink(missing_ok=True)
    job.record.update(summary={k: v for k, v in summary.items() if k != "out"}, wall_seconds=round(seconds, 1))
    _finish(job.partial, job.final, job.key, job.record)
    _log(f"{job.name} trained in {seconds:.0f} s ({summary['seconds_per_step']:.2f} s/step)")


def clip_tau(init: Path, loss_weights: Path, quantile: float = TAU_QUANTILE,
             samples_per_prompt: int = TAU_SAMPLES_PER_PROMPT, seed: int = TAU_SEED) -> tuple[float, dict]:
    """The clamp tau at ``quantile`` of the cosines that the CLIP-loss model gives the init's one-step samples.

    The samples are made as ``distill.train`` sees them (one-step x0, decoded by the PixelAutoencoder to
    [0, 1], no clamp); returns tau and a few statistics of the cosines for the record.
    """
    import numpy as np
    import torch

    from bench import sampling
    from bench.demo.data import PROMPTS
    from bench.demo.extractors import DemoContrastiveExtractor
    from bench.demo.teacher import encode_prompts, load_components
    from distill.clip_loss import decode_to_unit

    components = load_components(init)
    encoder = DemoContrastiveExtractor(loss_weights)
    prompts = [PROMPTS[i % 10] for i in range(10 * samples_per_prompt)]
    config = components["scheduler"].config
    t = sampling.onestep_timestep(config)
    with torch.no_grad():
        cond = encode_prompts(components["tokenizer"], components["text_encoder"], list(PROMPTS))
        noise = sampling.sample_noise(seed, range(len(prompts)), (1, 8, 8))
        x0 = sampling.onestep_x0(components["unet"], noise, cond[torch.arange(len(prompts)) % 10],
                                 float(sampling.alphas_cumprod(config)[t]), t)
        images = encoder.encode_image(decode_to_unit(components["vae"], x0))
        texts = encoder.encode_text(list(PROMPTS))[torch.arange(len(prompts)) % 10]
        cos = torch.nn.functional.cosine_similarity(images, texts, dim=-1).double().numpy()
    tau = float(np.quantile(cos, quantile))
    stats = {"quantile": quantile, "samples": len(cos), "seed": seed, "mean": round(float(cos.mean()), 4),
             "q10": round(float(np.quantile(cos, 0.1)), 4), "q50": round(float(np.quantile(cos, 0.5)), 4)}
    return round(tau, 4), stats


def _merge(a: Path, b: Path, final: Path, base: Path, key: dict) -> None:
    from distill.merge import main as merge_main

    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the command line prints its output folder: a temporary here
        merge_main([str(a), str(b), "--lam", str(MERGE_LAMBDA), "-o", str(tmp), "--base", str(base)])
    _finish(tmp, final, key, {"artefact": "merged", "seconds": round(time.time() - start, 1)})
    _log(f"merged {a.name} and {b.name} at lambda {MERGE_LAMBDA} -> {final}")


# --- the students --------------------------------------------------------------------------------------------


def ensure_students(world_root: str | Path = "results/demo", quick: bool = False) -> dict[str, Path]:
    """Train (once) demo-vsd-full and demo-vsd-lora-clip, and merge them into demo-merged.

    ``world_root`` must hold the world's teacher and extractors (``bench.demo.world.ensure_world``); a missing
    demo-turbo is trained here (``ensure_turbo``; part of its pairs on two processes first), in this process while
    model A trains beside it.
    ``quick=True`` is the CI variant: 3 steps of each at batch 16, the same code paths (under a minute).
    Returns ``{"demo-vsd-full": folder, "demo-vsd-lora-clip": folder, "demo-merged": folder}``.
    """
    from bench.demo.data import PROMPTS
    from bench.demo.regression import make_pairs
    from bench.demo.teacher import MARKER
    from bench.demo.world import ensure_turbo, folder_ready, regression_config, world_paths
    from bench.hashing import file_sha256

    begin = time.time()
    world, paths = world_paths(world_root), student_paths(world_root)
    for needed in (world.teacher, world.contrastive_loss):
        if not needed.exists():
            raise UserError(f"{needed} is missing: build the world first (bench.demo.world.ensure_world)")
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.prompts.exists() or paths.prompts.read_text() != "\n".join(PROMPTS) + "\n":
        paths.prompts.write_text("\n".join(PROMPTS) + "\n")
    teacher_sha = file_sha256(_unet_file(world.teacher))
    common = dict(teacher=str(world.teacher), prompts=str(paths.prompts), device="cpu", report_to="none",
                  sample_every=0, checkpoint_every=10 if quick else 50, checkpoint_limit=1, log_every=10)

    full = full_options(quick)
    full_key = dict(artefact="vsd-full", options=full, teacher_unet_sha256=teacher_sha, init="teacher")
    lora = lora_options(quick)

    jobs = []
    parallel = (os.cpu_count() or 1) >= 2
    turbo_missing = not (world.turbo / MARKER).exists()
    pairs = None
    if turbo_missing and parallel:  # part of demo-turbo's pairs first, on both cores, to even out the two paths
        config = regression_config(quick)
        pairs = make_pairs(world.teacher, config, processes=2, indices=range(int(config.pairs * TURBO_PAIRS_FIRST)))
    try:
        if not folder_ready(paths.vsd_full, full_key):
            jobs.append(_Job("demo-vsd-full", paths.vsd_full, paths.root / ".vsd-full.partial", full_key,
                             _argv({**common, **full, "student_init": str(world.teacher)}),
                             {"artefact": "vsd-full", "options": full}))
            _start(jobs[-1])
            if not parallel:
                _wait(jobs[-1])
        if turbo_missing:  # model B's init: trained here (one thread) while A trains
            ensure_turbo(world_root, quick, pairs=pairs)
        lora_key = dict(artefact="vsd-lora-clip", options=lora, teacher_unet_sha256=teacher_sha, init="turbo",
                        init_unet_sha256=file_sha256(_unet_file(world.turbo)),
                        clip_sha256=file_sha256(world.contrastive_loss), tau_quantile=TAU_QUANTILE)
        if not folder_ready(paths.vsd_lora_clip, lora_key):
            tau, stats = clip_tau(world.turbo, world.contrastive_loss)
            _log(f"clamped CLIP stand-in: tau = {tau} (the {TAU_QUANTILE:g} quantile of demo-turbo's cosines "
                 f"{stats})")
            jobs.append(_Job("demo-vsd-lora-clip", paths.vsd_lora_clip, paths.root / ".vsd-lora-clip.partial",
                             lora_key, _argv({**common, **lora, "student_init": str(world.turbo), "clip_tau": tau,
                                              "clip_pretrained": str(world.contrastive_loss)}),
                             {"artefact": "vsd-lora-clip", "options": {**lora, "clip_tau": tau}, "tau": stats}))
            _start(jobs[-1])
            if not parallel:
                _wait(jobs[-1])
        if parallel:
            for job in jobs:
                _wait(job)
    finally:
        for job in jobs:
            if job.process is not None and job.process.poll() is None:
                job.process.terminate()
                job.process.wait()

    merge_key = dict(artefact="merged", lam=MERGE_LAMBDA, a_sha256=file_sha256(_unet_file(paths.vsd_full)),
                     b_sha256=file_sha256(_unet_file(paths.vsd_lora_clip)))
    merged_now = not folder_ready(paths.merged, merge_key)
    if merged_now:
        _merge(paths.vsd_full, paths.vsd_lora_clip, paths.merged, world.teacher, merge_key)
    if jobs or merged_now:  # a run that found everything says nothing
        _log(f"demo students ready in {paths.root} ({time.time() - begin:.0f} s{', quick' if quick else ''})")
    return {"demo-vsd-full": paths.vsd_full, "demo-vsd-lora-clip": paths.vsd_lora_clip, "demo-merged": paths.merged}


def student_models(world_root: str | Path = "results/demo") -> dict:
    """The students as one-step float32 ``ModelSpec`` entries (text encoder, VAE, scheduler: the teacher's)."""
    from bench.demo.world import world_paths
    from bench.registry import ModelSpec

    paths, teacher = student_paths(world_root), str(world_paths(world_root).teacher)
    hint = (f"train the demo students first: python -c \"from bench.demo.students import ensure_students; "
            f"ensure_students('{world_root}')\"")
    specs = [ModelSpec(name, str(folder), kind="one-step", dtype="float32", base=teacher, hint=hint)
             for name, folder in (("demo-vsd-full", paths.vsd_full), ("demo-vsd-lora-clip", paths.vsd_lora_clip),
                                  ("demo-merged", paths.merged))]
    return {spec.name: spec for spec in specs}
