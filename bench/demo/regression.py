"""The demo's "SD Turbo": a one-step student regressed onto the teacher's multi-step samples.

DMD's regression loss (Yin et al. 2024, section 3.3) as a stand-in for adversarial distillation: pairs of
noise z and the teacher's DDIM-25, cfg-2 sample from that same z (clamped to [-1, 1]); the student, a full
copy of the teacher's UNet (its text encoder frozen and shared), is trained by MSE on its one-step x0
(``bench.sampling.onestep_x0`` at t = 999); the EMA weights are saved. Settings and measurements:
``docs/demo.md``.

The student is written as a full pipeline folder: its UNet plus copies of the teacher's text encoder,
tokenizer, scheduler and ``PixelAutoencoder``, so it loads on its own without ``bench_base.json``.
"""

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench import sampling
from bench.demo.data import EMPTY_PROMPT, PROMPTS
from bench.demo.teacher import MARKER, encode_prompts, load_components, log_stderr, progress, update


@dataclass(frozen=True)
class RegressionConfig:
    pairs: int = 2000
    pair_seed: int = 1000  # noise of pair i: bench.sampling.sample_noise(pair_seed, [i])
    guidance_scale: float = 2.0
    sample_steps: int = 25
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    ema_decay: float = 0.995
    seed: int = 0


@torch.no_grad()
def teacher_pairs(components: dict, config: RegressionConfig, indices: range, batch_size: int = 500,
                  log=None) -> torch.Tensor:
    """The targets (N, 1, 8, 8) in [-1, 1] of pairs ``indices``: pair i is the teacher's sample from the noise
    ``pair_inputs`` gives it, for the prompt of its class (i % 10)."""
    unet, scheduler = components["unet"], components["scheduler"]
    table = encode_prompts(components["tokenizer"], components["text_encoder"], list(PROMPTS) + [EMPTY_PROMPT])
    noise, labels = pair_inputs(config, indices, unet)
    targets, start = [], time.time()
    for i in range(0, len(indices), batch_size):
        z, label = noise[i:i + batch_size], labels[i:i + batch_size]
        x = sampling.denoise(unet, scheduler, z, table[label], table[[10] * len(label)], config.sample_steps,
                             config.guidance_scale)
        targets.append(x.clamp(-1, 1))  # a training target in image range, as DMD uses the teacher's images
        if log:
            log(f"regression pairs {min(i + batch_size, len(indices))}/{len(indices)} ({time.time() - start:.0f} s)")
    return torch.cat(targets)


def pair_inputs(config: RegressionConfig, indices, unet) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, class labels) of pairs ``indices``: pair i's noise is drawn from (pair_seed, i), its class is i % 10."""
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return sampling.sample_noise(config.pair_seed, indices, shape), torch.as_tensor(indices) % 10


def make_pairs(teacher_dir: str | Path, config: RegressionConfig, processes: int = 1, log=log_stderr,
               components: dict | None = None, indices: range | None = None) -> dict:
    """``{"targets", "seconds", "processes"}``: the targets of pairs ``indices`` (default all), made by
    ``processes`` CPU processes (one thread each; ``log`` must then be picklable), each taking a contiguous share.
    A pair depends on its index only, so the number of processes moves float rounding, nothing else. One process
    uses ``components`` when the caller has the teacher loaded already."""
    start, indices = time.time(), range(config.pairs) if indices is None else indices
    if processes == 1:
        targets = teacher_pairs(components or load_components(teacher_dir), config, indices, log=log)
    else:
        import tempfile

        import torch.multiprocessing
        from safetensors.torch import load_file

        with tempfile.TemporaryDirectory() as folder:
            torch.multiprocessing.spawn(_pairs_rank, nprocs=processes, args=(processes, teacher_dir, config, indices,
                                                                               folder, log))
            targets = torch.cat([load_file(Path(folder) / f"{rank}.safetensors")["targets"]
                                 for rank in range(processes)])
    seconds = time.time() - start
    log(f"regression pairs {indices.start}-{indices.stop - 1} made in {seconds:.0f} s "
        f"({processes} process{'es' if processes > 1 else ''})")
    return {"targets": targets, "seconds": seconds, "processes": processes}


def _pairs_rank(rank: int, processes: int, teacher_dir, config: RegressionConfig, indices: range, folder: str,
                log) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    share = indices[rank * len(indices) // processes:(rank + 1) * len(indices) // processes]
    targets = teacher_pairs(load_components(teacher_dir), config, share, log=log if rank == 0 else None)
    save_file({"targets": targets.contiguous()}, Path(folder) / f"{rank}.safetensors")


def train_regression(teacher_dir: str | Path, out_dir: str | Path, config: RegressionConfig = RegressionConfig(),
                     log=log_stderr, pairs: dict | None = None) -> Path:
    """Train the one-step student on the teacher's pairs and write its pipeline folder to ``out_dir``.

    ``pairs``: ``make_pairs``'s result for the first pairs (all of them, or a part made on more processes while
    this one was busy); the pairs it lacks are made here, on this process."""
    from diffusers.training_utils import EMAModel

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    components = load_components(teacher_dir)
    parts = [pairs] if pairs else []
    made = len(pairs["targets"]) if pairs else 0
    if made < config.pairs:
        parts.append(make_pairs(teacher_dir, config, log=log, components=components,
                                indices=range(made, config.pairs)))
    start = time.time()
    targets = torch.cat([part["targets"] for part in parts])
    noise, labels = pair_inputs(config, range(config.pairs), components["unet"])

    with torch.no_grad():
        table = encode_prompts(components["tokenizer"], components["text_encoder"], list(PROMPTS))
    abar = sampling.alphas_cumprod(components["scheduler"].config)
    timestep = sampling.onestep_timestep(components["scheduler"].config)
    abar_t = float(abar[timestep])
    student = copy.deepcopy(components["unet"]).train().requires_grad_(True)
    params = list(student.parameters())
    ema = EMAModel(params, decay=config.ema_decay, foreach=True)
    optimizer = torch.optim.Adam(params, lr=config.lr, foreach=True)  # torch's CPU default loops per tensor
    generator = torch.Generator().manual_seed(config.seed)
    running, train_start = None, time.time()
    for step in range(config.steps):
        batch = torch.randint(0, config.pairs, (config.batch_size,), generator=generator)
        x0 = sampling.onestep_x0(student, noise[batch], table[labels[batch]], abar_t, timestep)
        loss = torch.nn.functional.mse_loss(x0, targets[batch])
        update(loss, optimizer, params, ema)
        running = progress("regression", step, config.steps, loss, running, train_start, log)
    ema.copy_to(params)
    student.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir / "unet", safe_serialization=True)
    for part in ("text_encoder", "tokenizer", "scheduler", "vae"):
        shutil.copytree(teacher_dir / part, out_dir / part, dirs_exist_ok=True)
    shutil.copy2(teacher_dir / "model_index.json", out_dir / "model_index.json")
    seconds = time.time() - start
    marker = dict(artefact="turbo", config=asdict(config), teacher=str(teacher_dir),
                  pair_seconds=[round(part["seconds"], 1) for part in parts],
                  pair_processes=[part["processes"] for part in parts],
                  train_seconds=round(seconds, 1))
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log(f"regression student trained in {seconds:.0f} s -> {out_dir}")
    return out_dir
