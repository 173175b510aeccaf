"""`python -m distill.train`: SwiftBrush v2 students by variational score distillation (VSD).

SwiftBrush v2 (arXiv 2408.14176) released no training code; this follows SwiftBrush v1's official
script (VinAIResearch/SwiftBrush ``train_swiftbrush.py``) for the VSD mechanics, the paper for the v2
additions (SD-Turbo init, LoRA student r=256/alpha=512, clamped CLIP loss through TAESD), DMD2
(tianweiy/DMD2) for the optional stabilisers, and diffusers' LoRA training examples for the order of
the script. ``docs/distill.md`` lists the sources and where we depart from them.

    python -m distill.train --prompts prompts.txt --scheme full --out results/model-a       # model A
    python -m distill.train --prompts prompts.txt --scheme lora --clip-pretrained vitb32.pt \\
        --out results/model-b                                                              # model B
    python -m distill.merge results/model-a results/model-b --lam 0.5 -o results/merged

The output folder loads in the bench as ``NAME=<out>``: ``unet_ema/`` (EMA weights, LoRA fused) and
``bench_base.json`` naming where the tokenizer, text encoder, VAE and scheduler come from.
Checkpoints (``<out>/checkpoints/checkpoint-<step>``) resume exactly with ``--resume latest``.
"""

import argparse
import copy
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import add_arguments, from_namespace, option
from bench.errors import UserError, exit_on_user_error
from bench.hashing import folder_sha256, locations_sha256
from bench.load import (
    encode_prompts,
    fuse_lora,
    hide_library_progress_bars,
    load_scheduler_config,
    load_text,
    load_unet,
    load_vae,
    resolve_layout,
)
from bench.registry import SD21, SD21_MIRROR, SD_TURBO
from bench.sampling import alphas_cumprod, onestep_timestep, onestep_x0, sample_noise
from bench.store import atomic_write_text
from distill import utils
from distill.clip_loss import ClampedClipLoss, clip_weight, decode_to_unit, load_clip_encoder
from distill.prompts import load_prompts
from distill.vsd import eps_from_prediction, fake_loss, vsd_loss

ATTENTION = "to_q,to_k,to_v,to_out.0"
SD21_HINT = f"; Stability AI withdrew SD 2.1 from the Hub in late 2025, try --teacher {SD21_MIRROR}"


@dataclass
class TrainConfig:
    # models
    prompts: str = option("", "training prompts: .txt (one per line), .jsonl, .csv or .parquet; deduplicated")
    prompt_column: str | None = option(None, "column/key of the prompt in jsonl/csv/parquet "
                                       "(default: prompt, caption, text)")
    teacher: str = option(SD21, "frozen teacher: HF id or pipeline folder (also gives the text encoder and scheduler)")
    student_init: str = option(SD_TURBO, "student init: HF id, pipeline folder, UNet folder or folder with unet_ema/")
    student_base: str | None = option(None, "tokenizer/text encoder/VAE/scheduler of the student, written to "
                                      "bench_base.json (default: the init's base; the teacher for a bare UNet)")
    scheme: str = option("lora", "full: all UNet weights, VSD only (model A); lora: LoRA student, VSD + CLIP "
                         "(model B)", choices=["full", "lora"])
    out: str = option("results/sbv2-student", "output folder: unet_ema/, checkpoints/, logs/, samples/")
    # optimisation
    max_steps: int = option(60_000, "student updates (SwiftBrush: 3 epochs of 1.38M prompts at batch 64 = 65k)")
    stop_at: int | None = option(None, "stop (with a checkpoint) after this step, for time-sliced jobs; "
                                 "schedules still span --max-steps")
    batch_size: int = option(16, "prompts per process per step (SwiftBrush: 16 per GPU)")
    lr: float | None = option(None, "student learning rate (default: full 1e-6 as SwiftBrush; lora 1e-5)")
    fake_lr: float | None = option(None, "fake-teacher learning rate (default: LoRA fake 1e-3 as SwiftBrush; "
                                   "full 1e-5)")
    weight_decay: float = option(0.01, "AdamW weight decay of both optimizers")
    warmup_steps: int = option(0, "linear learning-rate warm-up steps (both optimizers)")
    max_grad_norm: float = option(1.0, "gradient clipping of both models (SwiftBrush 1, DMD2 10)")
    ema_decay: float = option(0.9999, "student EMA decay (diffusers EMAModel, warm-up (1+n)/(10+n)); short runs: 0.99")
    seed: int = option(0, "seed of weights init, noise, timesteps and data order")
    device: str = option("auto", "auto (GPU if any), cpu or cuda", choices=["auto", "cpu", "cuda"])
    precision: str = option("auto", "auto: bf16 autocast on a GPU, fp32 on a CPU", choices=["auto", "bf16", "fp32"])
    gradient_checkpointing: bool = option(False, "recompute UNet activations in backward (student and fake)")
    # VSD
    teacher_cfg: float = option(4.5, "classifier-free guidance of the real teacher (SwiftBrush 4.5; demo world ~2)")
    fake_cfg: float | None = option(None, "guidance of the fake teacher (default: the teacher's, as SwiftBrush; "
                                    "DMD2: 1)")
    fake: str = option("lora", "fake teacher: LoRA on the teacher's UNet (SwiftBrush) or a full copy (DMD2)",
                       choices=["lora", "full"])
    fake_rank: int = option(64, "LoRA rank of the fake teacher")
    fake_alpha: float = option(128.0, "LoRA alpha of the fake teacher (paper 128; SwiftBrush v1 README 108)")
    fake_targets: str = option(ATTENTION, "modules of the fake teacher's LoRA, comma-separated")
    fake_updates: int = option(1, "fake-teacher updates per student update (DMD2: 5-10); extra ones use fresh samples")
    fake_warmup_steps: int = option(0, "first steps update only the fake teacher")
    normalize_grad: bool = option(False, "DMD2 gradient: x0-space difference / mean|x0 - x0_real| instead of sigma^2")
    t_min: int = option(20, "smallest VSD timestep")
    t_max: int = option(980, "largest VSD timestep")
    null_prompt_p: float = option(0.1, "probability of the empty prompt in the fake teacher's loss")
    # LoRA student
    student_rank: int = option(256, "LoRA rank of the student (scheme lora)")
    student_alpha: float = option(512.0, "LoRA alpha of the student (scheme lora)")
    student_targets: str = option(ATTENTION, "modules of the student's LoRA, comma-separated")
    # clamped CLIP loss
    clip_weight: float | None = option(None, "CLIP-loss weight at step 0 (default: lora 0.1, full 0)")
    clip_weight_end: float = option(0.0, "CLIP-loss weight at the last step")
    clip_schedule: str = option("linear", "shape of the weight decay", choices=["linear", "cosine"])
    clip_tau: float = option(0.35, "clamp: samples with cosine above tau get no CLIP loss")
    clip_model: str = option("ViT-B-32", "open_clip name, local-dir:FOLDER, or package.module:factory (a plug-in)")
    clip_pretrained: str | None = option(None, "open_clip weights file (or tag; 'random' for probes)")
    decoder: str = option("taesd", "latent decoder of the CLIP loss: taesd, or vae (the teacher folder's own)",
                          choices=["taesd", "vae"])
    taesd: str = option("madebyollin/taesd", "TAESD (AutoencoderTiny) HF id or folder")
    # real-data regularisation (DMD's regression loss, in latent space)
    real_data: str | None = option(None, "folder of .safetensors files with 'noise' and 'x0' latents and 'prompts' "
                                   "metadata (distill.utils.write_real_pairs)")
    real_data_weight: float = option(0.25, "weight of the MSE between the student's x0 and the pair's x0")
    real_data_batch: int | None = option(None, "pairs per process per step (default: --batch-size)")
    # bookkeeping
    cache_dir: str | None = option(None, "text-embedding cache (default: <out>/text_cache); 77xD per prompt")
    text_cache_dtype: str = option("float16", "storage dtype of cached embeddings", choices=["float16", "float32"])
    text_cache: str = option("disk", "prompt embeddings: disk (encoded once, memory-mapped) or off (encoded per "
                             "batch, for prompt sets whose cache would not fit: 158 KB per prompt for SD 2.1)",
                             choices=["disk", "off"])
    log_every: int = option(10, "print a line every N steps (TensorBoard gets every step)")
    sample_every: int = option(500, "sample grid every N steps, raw and EMA student (0: never)")
    num_samples: int = option(8, "images in a sample grid (the first prompts, fixed noise)")
    checkpoint_every: int = option(1000, "checkpoint every N steps (0: only at the end)")
    checkpoint_limit: int = option(3, "keep this many checkpoints")
    resume: str | None = option(None, "'latest' or a checkpoint folder")
    report_to: str = option("tensorboard", "scalar and image logging", choices=["tensorboard", "none"])
    save_final: bool = option(True, "write the final checkpoint and unet_ema/ (off for probes)")


# Fields that may change between a run and its resumption; the others must match the checkpoint.
RESUMABLE = {"max_steps", "stop_at", "device", "log_every", "sample_every", "num_samples", "checkpoint_every",
             "checkpoint_limit", "resume", "report_to", "save_final", "cache_dir", "out"}


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the scheme-dependent defaults and reject impossible settings with one line each."""
    full = cfg.scheme == "full"
    cfg = dataclasses.replace(
        cfg, lr=cfg.lr if cfg.lr is not None else 1e-6 if full else 1e-5,
        fake_lr=cfg.fake_lr if cfg.fake_lr is not None else 1e-3 if cfg.fake == "lora" else 1e-5,
        clip_weight=cfg.clip_weight if cfg.clip_weight is not None else 0.0 if full else 0.1,
        device=cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    checks = [
        (not cfg.prompts, "--prompts is required: a .txt/.jsonl/.csv/.parquet file of captions"),
        (cfg.prompts and not Path(cfg.prompts).is_file(), f"--prompts {cfg.prompts!r} does not exist"),
        (cfg.lr <= 0 or cfg.fake_lr <= 0, "--lr and --fake-lr must be > 0"),
        (cfg.batch_size < 1 or cfg.max_steps < 1, "--batch-size and --max-steps must be >= 1"),
        (cfg.stop_at is not None and not 1 <= cfg.stop_at <= cfg.max_steps, "--stop-at must be in [1, --max-steps]"),
        (cfg.fake_updates < 1, "--fake-updates must be >= 1"),
        (cfg.fake_warmup_steps >= cfg.max_steps, "--fake-warmup-steps must be below --max-steps"),
        (not 0 <= cfg.ema_decay < 1, "--ema-decay must be in [0, 1)"),
        (cfg.max_grad_norm <= 0 or cfg.weight_decay < 0 or cfg.warmup_steps < 0,
         "--max-grad-norm must be > 0, --weight-decay and --warmup-steps >= 0"),
        (not 0 <= cfg.t_min < cfg.t_max, "--t-min must be >= 0 and below --t-max"),
        (cfg.teacher_cfg < 0 or (cfg.fake_cfg or 0) < 0, "--teacher-cfg and --fake-cfg must be >= 0"),
        (min(cfg.fake_rank, cfg.student_rank) < 1 or min(cfg.fake_alpha, cfg.student_alpha) <= 0,
         "LoRA ranks must be >= 1 and alphas > 0"),
        (not 0 <= cfg.null_prompt_p <= 1, "--null-prompt-p must be in [0, 1]"),
        (min(cfg.clip_weight, cfg.clip_weight_end) < 0, "--clip-weight and --clip-weight-end must be >= 0"),
        (cfg.real_data is not None and not Path(cfg.real_data).is_dir(),
         f"--real-data {cfg.real_data!r} is not a folder"),
        (cfg.real_data is not None and cfg.real_data_weight <= 0, "--real-data needs --real-data-weight > 0"),
        ((cfg.real_data_batch or 1) < 1, "--real-data-batch must be >= 1"),
        (min(cfg.checkpoint_every, cfg.sample_every) < 0 or cfg.checkpoint_limit < 1 or cfg.log_every < 1,
         "--checkpoint-every and --sample-every must be >= 0, --checkpoint-limit and --log-every >= 1"),
        (cfg.device == "cuda" and not torch.cuda.is_available(), "--device cuda but no GPU is visible"),
        (cfg.precision == "bf16" and cfg.device == "cpu", "--precision bf16 needs a GPU; use auto or fp32 on a CPU"),
        (cfg.resume not in (None, "latest") and not Path(cfg.resume or "").is_dir(),
         f"--resume {cfg.resume!r}: no such checkpoint folder (or pass 'latest')"),
    ]
    for failed, message in checks:
        if failed:
            raise UserError(message)
    return cfg


def _student_layout(cfg: TrainConfig) -> tuple[str, str | None, str]:
    """(UNet location, subfolder, base) of the student init; a bare UNet folder defaults to the teacher."""
    path = Path(cfg.student_init)
    bare = path.is_dir() and not (path / "model_index.json").exists() and not (path / "bench_base.json").exists()
    return resolve_layout(cfg.student_init, cfg.student_base or (cfg.teacher if bare else None))


def _portable(location: str) -> str:
    return str(Path(location).resolve()) if Path(location).exists() else location


def _latent_shape(unet) -> tuple[int, int, int]:
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return (unet.config.in_channels, size, size)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training; returns {"step", "seconds_per_step", "peak_memory_gib", "out"}, plus
    "clip_active" (fraction of samples below tau: mean, first and last tenth of the steps) with a CLIP loss."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, GradientAccumulationPlugin, ProjectConfiguration, set_seed
    from diffusers import AutoencoderTiny
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, get_peft_model

    # 0. Settings, output folders, accelerator and seed.
    cfg = resolve(cfg)
    out = Path(cfg.out)
    checkpoints = out / "checkpoints"
    if cfg.resume is None and utils.list_checkpoints(checkpoints):
        raise UserError(f"{out} already holds checkpoints: pass --resume latest, or another --out")
    # Precision is --precision's alone (our autocast), one batch is one update: `accelerate config` / launch
    # settings must not add a second autocast, a GradScaler or a loss divisor that no checkpoint records.
    accelerator = Accelerator(cpu=cfg.device == "cpu", log_with=None if cfg.report_to == "none" else cfg.report_to,
                              mixed_precision="no",
                              gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM):
        raise UserError(f"distill.train replicates its parameters (DDP); {accelerator.distributed_type.value} is not "
                        "supported: choose multi-GPU (DDP) in `accelerate config`")
    device, main = accelerator.device, accelerator.is_main_process
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    weight_dtype = torch.bfloat16 if bf16 else torch.float32

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def log(message: str):  # progress goes to stderr; stdout carries only the final JSON summary
        if main:
            print(message, file=sys.stderr, flush=True)

    set_seed(cfg.seed, device_specific=True)  # each process draws its own noise
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # 1. Prompts and text embeddings: the teacher's text encoder, once, cached on disk (student and
    #    teacher share it, as SD-Turbo and SD 2.1 do; checked when both are local folders).
    prompts = load_prompts(cfg.prompts, cfg.prompt_column)
    teacher_location, teacher_subfolder, teacher_base = resolve_layout(cfg.teacher)
    student_location, student_subfolder, student_base = _student_layout(cfg)
    with utils.loading("teacher", cfg.teacher, "--teacher", SD21_HINT if cfg.teacher == SD21 else ""):
        tokenizer, text_encoder = load_text(teacher_base)
        teacher = load_unet(teacher_location, teacher_subfolder).requires_grad_(False)
        teacher_schedule = load_scheduler_config(teacher_base)
    with utils.loading("student init", cfg.student_init, "--student-init"):
        student = load_unet(student_location, student_subfolder)
        student_schedule = load_scheduler_config(student_base)
    encoder_hash = folder_sha256(Path(teacher_base) / "text_encoder")
    if _portable(student_base) != _portable(teacher_base):
        student_hash = folder_sha256(Path(student_base) / "text_encoder")
        if encoder_hash and student_hash and encoder_hash != student_hash:
            raise UserError(f"the student's base {student_base!r} has another text encoder than the teacher "
                            f"{teacher_base!r}: pass --student-base with the teacher's text encoder")
    text_encoder.requires_grad_(False).to(device)
    cache = Path(cfg.cache_dir or out / "text_cache")
    text_key = {"text_encoder": _portable(teacher_base), "sha256": encoder_hash, "dtype": cfg.text_cache_dtype}

    def embed(texts):
        return encode_prompts(tokenizer, text_encoder, texts)

    if cfg.text_cache == "off":
        text_embeddings = utils.EncodedOnDemand(prompts, embed)
    else:
        with accelerator.main_process_first():
            text_embeddings = utils.cached_embeddings(cache, text_key, prompts, embed, dtype=cfg.text_cache_dtype)
    null_embedding = embed([""]).float()
    if cfg.real_data:
        pair_noise, pair_x0, pair_prompts = utils.load_real_pairs(cfg.real_data)
        with accelerator.main_process_first():
            pair_embeddings = utils.cached_embeddings(cache, text_key, pair_prompts, embed, dtype=cfg.text_cache_dtype)
    if cfg.text_cache == "disk":
        text_encoder.to("cpu")  # not needed on the device any more

    # 2. The frozen teacher and the fake teacher: a LoRA on the teacher's own UNet, switched off for
    #    the teacher (SwiftBrush), or a full trainable copy (DMD2). The fake trains in float32.
    schedule = alphas_cumprod(teacher_schedule).to(device)
    if cfg.t_max >= len(schedule):
        raise UserError(f"--t-max {cfg.t_max} is beyond the teacher's {len(schedule)} timesteps")
    fake = copy.deepcopy(teacher).requires_grad_(True) if cfg.fake == "full" else teacher
    teacher.to(device, weight_dtype) if bf16 else teacher.to(device)
    if cfg.fake == "lora":
        fake.add_adapter(LoraConfig(r=cfg.fake_rank, lora_alpha=cfg.fake_alpha,
                                    target_modules=cfg.fake_targets.split(",")))
        cast_training_params(fake, dtype=torch.float32)

    # 3. The student, initialised from SD-Turbo (or any folder): all weights, or a LoRA on frozen weights.
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        fake.enable_gradient_checkpointing()
    latent_shape = _latent_shape(student)
    same_text = student.config.cross_attention_dim == teacher.config.cross_attention_dim
    if latent_shape != _latent_shape(teacher) or not same_text:
        raise UserError(f"student {cfg.student_init!r} (latents {latent_shape}) and teacher {cfg.teacher!r} "
                        f"(latents {_latent_shape(teacher)}) do not share a latent space / text conditioning")
    if student_schedule.get("prediction_type", "epsilon") != "epsilon":
        raise UserError(f"the student's scheduler ({student_base}) is not epsilon-prediction; one-step x0 assumes eps")
    one_step_t = onestep_timestep(student_schedule)
    one_step_abar = float(alphas_cumprod(student_schedule)[one_step_t])
    if cfg.scheme == "lora":
        student.requires_grad_(False)
        student = get_peft_model(student, LoraConfig(r=cfg.student_rank, lora_alpha=cfg.student_alpha,
                                                      target_modules=cfg.student_targets.split(",")))
        student.peft_config["default"].base_model_name_or_path = _portable(cfg.student_init)
    student.train()
    fake.train()

    # 4. Optimizers; the student's EMA is made after `prepare` put the weights on the device.
    def adamw(module, lr):  # foreach also on a CPU (torch's default there is per tensor: ~30% slower steps)
        return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=cfg.weight_decay, foreach=True)

    student, fake, student_optimizer, fake_optimizer = accelerator.prepare(
        student, fake, adamw(student, cfg.lr), adamw(fake, cfg.fake_lr))
    student_params = {n: p for n, p in accelerator.unwrap_model(student).named_parameters() if p.requires_grad}
    fake_params = {n: p for n, p in accelerator.unwrap_model(fake).named_parameters() if p.requires_grad}
    ema = utils.StudentEMA(accelerator.unwrap_model(student), student_params, cfg.ema_decay, cfg.scheme == "lora")

    # 5. The scores as eps functions (v-prediction teachers converted), the CLIP loss, sampling helpers.
    def eps_fn(unet, prediction_type):
        def eps(x_t, t, embeddings):
            with autocast():
                out = unet(x_t, t, encoder_hidden_states=embeddings).sample[:, : x_t.shape[1]]
            return eps_from_prediction(out.float(), x_t, schedule[t], prediction_type)
        return eps

    prediction_type = teacher_schedule.get("prediction_type", "epsilon")
    fake_eps = eps_fn(fake, prediction_type)
    if cfg.fake == "full":
        real_eps = eps_fn(teacher, prediction_type)
    else:
        def real_eps(x_t, t, embeddings):
            with utils.adapters_disabled(accelerator.unwrap_model(fake)):
                return fake_eps(x_t, t, embeddings)

    clip_loss = None
    if max(cfg.clip_weight, cfg.clip_weight_end) > 0:
        with utils.loading("CLIP-loss decoder", cfg.taesd if cfg.decoder == "taesd" else teacher_base, "--taesd"):
            decoder = AutoencoderTiny.from_pretrained(cfg.taesd) if cfg.decoder == "taesd" else load_vae(teacher_base)
        encoder = load_clip_encoder(cfg.clip_model, cfg.clip_pretrained, device)
        for module in (decoder, encoder):
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval().to(device)
        clip_loss = ClampedClipLoss(decoder, encoder.encode_image, cfg.clip_tau)
        clip_key = {"clip": cfg.clip_model, "pretrained": cfg.clip_pretrained,
                    "seed": cfg.seed if cfg.clip_pretrained == "random" else None,
                    "sha256": locations_sha256(cfg.clip_model.removeprefix("local-dir:"), cfg.clip_pretrained)}
        with accelerator.main_process_first():
            clip_text = utils.cached_embeddings(cache, clip_key, prompts,
                                                lambda texts: torch.as_tensor(encoder.encode_text(texts)),
                                                dtype="float32")

    def rows(array, indices):  # the embeddings of a batch (cached or encoded now), float32 on the device
        return torch.as_tensor(array[indices]).to(device, torch.float32)

    def one_step(noise, embeddings, unet=student):
        with autocast():
            return onestep_x0(unet, noise, embeddings, one_step_abar, one_step_t)

    # Logging: TensorBoard scalars, sample grids from fixed noise and the first prompts (config: after resume).
    sample_noise_fixed = sample_noise(cfg.seed, range(cfg.num_samples), latent_shape).to(device)
    sample_vae = load_vae(student_base).requires_grad_(False).to(device) if cfg.sample_every and main else None

    @torch.no_grad()
    def write_samples(step: int):
        """A grid of the raw (top rows) and EMA (bottom rows) student on fixed noise and prompts."""
        embeddings = rows(text_embeddings, np.arange(cfg.num_samples) % len(prompts))
        unwrapped = accelerator.unwrap_model(student)  # main process only: no DDP forward
        raw = decode_to_unit(sample_vae, one_step(sample_noise_fixed, embeddings, unwrapped))
        with ema.applied(unwrapped):
            smooth = decode_to_unit(sample_vae, one_step(sample_noise_fixed, embeddings, unwrapped))
        grid = utils.image_grid(torch.cat([raw, smooth]), rows=2 * (1 + (cfg.num_samples - 1) // 8))
        (out / "samples").mkdir(exist_ok=True)
        from PIL import Image
        Image.fromarray(grid).save(out / "samples" / f"step-{step:07d}.png")
        if cfg.report_to == "tensorboard":
            accelerator.get_tracker("tensorboard", unwrap=True).add_image("samples", grid, step, dataformats="HWC")

    # 6. Checkpoints and resume: weights, optimizers, EMA, RNG states (restored last, right before the loop);
    #    the data order is a function of the step.
    def save_checkpoint(step: int):
        final, tmp = checkpoints / f"checkpoint-{step}", checkpoints / f"checkpoint-{step}.tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(utils.rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        if main:
            utils.save_tensors(tmp / "student.safetensors", student_params)
            utils.save_tensors(tmp / "student_ema.safetensors", ema.named_shadow())
            utils.save_tensors(tmp / "fake.safetensors", fake_params)
            torch.save({"student": student_optimizer.state_dict(), "fake": fake_optimizer.state_dict()},
                       tmp / "optimizers.pt")
            (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
            (tmp / "state.json").write_text(json.dumps({"step": step, "ema": ema.state(), "prompts": len(prompts),
                                                        "data": data_digest,
                                                        "num_processes": accelerator.num_processes}, indent=1))
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            utils.prune_checkpoints(checkpoints, cfg.checkpoint_limit)

    def load_checkpoint(folder: Path) -> int:
        saved = json.loads((folder / "config.json").read_text())
        state = json.loads((folder / "state.json").read_text())
        changed = [k for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE and saved.get(k) != v]
        if state["prompts"] != len(prompts) or state.get("data", data_digest) != data_digest:
            changed.append("the contents of --prompts / --real-data")
        if state["num_processes"] != accelerator.num_processes:
            changed.append(f"the number of processes ({state['num_processes']})")
        if changed:
            raise UserError(f"{folder} was made with other settings ({', '.join(changed)}): "
                            "resume with the same ones, or start a new --out")
        utils.load_tensors_into(folder / "student.safetensors", student_params)
        ema.load(folder / "student_ema.safetensors", state["ema"])
        utils.load_tensors_into(folder / "fake.safetensors", fake_params)
        optimizers = torch.load(folder / "optimizers.pt", map_location="cpu", weights_only=True)
        student_optimizer.load_state_dict(optimizers["student"])
        fake_optimizer.load_state_dict(optimizers["fake"])
        utils.set_rng_state(torch.load(folder / f"rng-{accelerator.process_index}.pt", weights_only=True))
        return state["step"]

    # What the data order is a function of, besides the step: a resume must see the same prompts and pairs.
    data_digest = {"prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
                   "pairs": locations_sha256(cfg.real_data) if cfg.real_data else None}
    step = 0
    if cfg.resume is not None:
        found = utils.list_checkpoints(checkpoints) if cfg.resume == "latest" else [Path(cfg.resume)]
        if found:
            step = load_checkpoint(found[-1])
            log(f"resumed from {found[-1]} at step {step}")
        else:
            log(f"no checkpoint under {checkpoints}: starting a new run")
    if main:  # only now: a refused resume leaves the run's config as it was
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    accelerator.init_trackers("distill", config={k: v for k, v in dataclasses.asdict(cfg).items() if v is not None})

    # 7. The loop: one student update, then `fake_updates` fake-teacher updates, per step.
    stop = cfg.stop_at or cfg.max_steps
    times, clip_active = [], []
    while step < stop:
        if cfg.sample_every and step % cfg.sample_every == 0 and main:
            write_samples(step)
        started = time.perf_counter()
        # Each optimizer warms up from its own first update (the student's comes after --fake-warmup-steps).
        warm = {"student": warm_up(step - cfg.fake_warmup_steps, cfg.warmup_steps),
                "fake": warm_up(step, cfg.warmup_steps)}
        for name, optimizer, lr in (("student", student_optimizer, cfg.lr), ("fake", fake_optimizer, cfg.fake_lr)):
            for group in optimizer.param_groups:
                group["lr"] = lr * warm[name]
        logs = {"lr/student": cfg.lr * warm["student"], "lr/fake": cfg.fake_lr * warm["fake"]}

        # 7a. This step's prompts (a function of the step) and the student's one-step samples x0.
        indices = utils.batch_indices(step, len(prompts), cfg.batch_size, cfg.seed, accelerator.num_processes,
                                      accelerator.process_index)
        cond = rows(text_embeddings, indices)
        noise = torch.randn((cfg.batch_size, *latent_shape), device=device)
        train_student = step >= cfg.fake_warmup_steps
        if cfg.real_data:  # the regression pairs ride in the same forward (one DDP forward per backward)
            pairs = utils.batch_indices(step, len(pair_prompts), cfg.real_data_batch or cfg.batch_size, cfg.seed + 1,
                                        accelerator.num_processes, accelerator.process_index)
            noise = torch.cat([noise, pair_noise[pairs].to(device)])
            cond_all = torch.cat([cond, rows(pair_embeddings, pairs)])
        with torch.set_grad_enabled(train_student):
            x0 = one_step(noise, cond_all if cfg.real_data else cond)
        x0, x0_pairs = x0[: cfg.batch_size], x0[cfg.batch_size:]

        # 7b. Student update: VSD (+ clamped CLIP through the decoder, + regression on real pairs).
        if train_student:
            loss, diagnostics = vsd_loss(x0, real_eps, fake_eps, cond, null_embedding, schedule, cfg.teacher_cfg,
                                         cfg.fake_cfg, cfg.normalize_grad, (cfg.t_min, cfg.t_max))
            logs.update({"loss/vsd": loss.item(), **{f"vsd/{k}": v for k, v in diagnostics.items()}})
            weight = clip_weight(step, cfg.max_steps, cfg.clip_weight, cfg.clip_weight_end, cfg.clip_schedule)
            if clip_loss is not None and weight > 0:
                with autocast():
                    loss_clip, clip_logs = clip_loss(x0, rows(clip_text, indices))
                loss = loss + weight * loss_clip
                logs.update({"loss/clip": loss_clip.item(), "clip/weight": weight,
                             **{f"clip/{k}": v for k, v in clip_logs.items()}})
                clip_active.append(clip_logs["active"])
            if cfg.real_data:
                loss_reg = F.mse_loss(x0_pairs.float(), pair_x0[pairs].to(device))
                loss = loss + cfg.real_data_weight * loss_reg
                logs["loss/regression"] = loss_reg.item()
            accelerator.backward(loss)
            logs["grad_norm/student"] = accelerator.clip_grad_norm_(student_params.values(), cfg.max_grad_norm).item()
            student_optimizer.step()
            student_optimizer.zero_grad(set_to_none=True)
            ema.step()

        # 7c. Fake-teacher updates on detached student samples: this step's, then fresh ones.
        samples = x0.detach()
        for update in range(cfg.fake_updates):
            if update > 0:
                with torch.no_grad():
                    samples = one_step(torch.randn_like(samples), cond)
            loss_fake = fake_loss(fake_eps, samples, cond, null_embedding, schedule, cfg.null_prompt_p)
            accelerator.backward(loss_fake)
            logs["grad_norm/fake"] = accelerator.clip_grad_norm_(fake_params.values(), cfg.max_grad_norm).item()
            fake_optimizer.step()
            fake_optimizer.zero_grad(set_to_none=True)
        logs["loss/fake"] = loss_fake.item()  # note: .item() calls are CPU-GPU sync points

        # 7d. Bookkeeping: timing, logs, checkpoints.
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
        logs["time/s_per_step"] = times[-1]
        accelerator.log(logs, step=step)
        if step % cfg.log_every == 0 or step == stop:
            log(f"step {step}/{cfg.max_steps} " + " ".join(
                f"{k}={v:.4g}" for k, v in logs.items() if k.startswith(("loss", "grad_norm", "time", "clip/active"))))
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or (step == stop and cfg.save_final):
            save_checkpoint(step)

    # 8. Export: the EMA student as a diffusers UNet folder (LoRA fused, adapter kept) the bench can load.
    if step == cfg.max_steps and cfg.save_final and main:
        if cfg.sample_every:
            write_samples(step)
        export(accelerator.unwrap_model(student), ema, cfg, out,
               (student_location, student_subfolder), student_base)
    accelerator.end_training()
    measured = times[1:] or times
    summary = {"step": step, "out": str(out),
               "seconds_per_step": float(np.mean(measured)) if measured else float("nan"),
               "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    if clip_active:  # how often the clamp let the CLIP loss act (this process, the steps it ran, weight > 0)
        tenth = max(1, len(clip_active) // 10)
        summary["clip_active"] = {"mean": float(np.mean(clip_active)), "first_tenth": float(np.mean(
            clip_active[:tenth])), "last_tenth": float(np.mean(clip_active[-tenth:])), "steps": len(clip_active)}
    return summary


def export(student, ema: utils.StudentEMA, cfg: TrainConfig, out: Path, init: tuple[str, str | None],
           base: str) -> None:
    """``unet/`` (raw) and ``unet_ema/`` (EMA) UNet folders; a LoRA student also keeps its raw adapter
    (``unet_lora/``), and its ``unet_ema/`` holds the EMA of the fused weights (no adapter represents it)."""
    if cfg.scheme == "full":
        student.save_pretrained(out / "unet", safe_serialization=True)
        with ema.applied(student):
            student.save_pretrained(out / "unet_ema", safe_serialization=True)
    else:
        student.save_pretrained(out / "unet_lora")
        fuse_lora(load_unet(*init), str(out / "unet_lora")).save_pretrained(out / "unet", safe_serialization=True)
        dense = load_unet(*init)
        _, unexpected = dense.load_state_dict(ema.named_shadow(), strict=False)
        assert not unexpected, unexpected
        dense.save_pretrained(out / "unet_ema", safe_serialization=True)
    pointer = json.dumps({"base": _portable(base)})
    for folder in (out / "unet", out / "unet_ema", out):
        (folder / "bench_base.json").write_text(pointer)


def warm_up(updates_before: int, warmup_steps: int) -> float:
    """The learning-rate factor of an optimizer's update number ``updates_before`` (0 for its first)."""
    return min(1.0, max(updates_before + 1, 0) / warmup_steps) if warmup_steps else 1.0


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="distill.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    add_arguments(parser, TrainConfig)
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    args = parser.parse_args(argv)
    hide_library_progress_bars()
    with exit_on_user_error("distill.train"):
        cfg = from_namespace(TrainConfig, args)
        if args.dry_run:
            print(json.dumps(dataclasses.asdict(resolve(cfg)), indent=1))
            return None
        summary = train(cfg)
    print(json.dumps(summary), file=sys.stdout)
    return summary


if __name__ == "__main__":
    main()
