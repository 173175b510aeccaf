"""The demo teacher: a tiny text-conditioned pixel-space diffusion model trained on the 8x8 digits.

It is Stable Diffusion 2.1 in miniature, with the same interfaces: a ``UNet2DConditionModel`` predicting
epsilon under SD's scaled-linear schedule (beta 0.00085 -> 0.012, 1000 steps), conditioned on the
``last_hidden_state`` of a ``CLIPTextModel`` fed by the real CLIP tokenizer (``padding="max_length"``, pad
``"!"``, 16 tokens instead of SD's 77: ``TeacherConfig.context_length``), the empty prompt for classifier-free
guidance (10% prompt dropout in training), and an EMA of the weights. The text encoder is small (hidden 64, 2
layers, 4 heads) and trained jointly with the UNet. The result is saved as a ``StableDiffusionPipeline`` folder
(``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``vae/``) whose ``vae`` is
the exact ``PixelAutoencoder``, so the rest of the project loads it like any model. The recipe and its history:
``docs/demo.md``.
"""

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench import sampling
from bench.demo.data import EMPTY_PROMPT, PROMPTS, RESOLUTION, digits, to_uint8

MARKER = "bench_demo.json"  # written last into every trained folder: its presence means "complete"


@dataclass(frozen=True)
class TeacherConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-4  # cosine decay ends here
    warmup: int = 100
    ema_decay: float = 0.999
    uncond_prob: float = 0.1  # prompt dropout for classifier-free guidance
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    # The prompts take 6 tokens: SD's 77 would spend the UNet's cross-attention on pad tokens (docs/demo.md).
    context_length: int = 16
    seed: int = 0


def log_stderr(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def scheduler_config() -> dict:
    """SD 2.1-base's DDIM settings (eps prediction, leading timesteps, steps_offset 1)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                timestep_spacing="leading")


def build_unet(config: TeacherConfig):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(config.seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.text_hidden, attention_head_dim=8, norm_num_groups=8,
    )


def build_text_encoder(config: TeacherConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed + 1)
    text_config = CLIPTextConfig(
        vocab_size=49408, hidden_size=config.text_hidden, intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=config.context_length, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=0,
    )
    return CLIPTextModel(text_config)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids exactly as ``StableDiffusionPipeline.encode_prompt`` makes them."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(N, context length, hidden) ``encoder_hidden_states``: the text encoder's last hidden state, as in SD 2.1."""
    ids = tokenize(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(ids)[0]


def load_components(folder: str | Path, device: str = "cpu") -> dict:
    """unet, text_encoder, tokenizer, scheduler (DDIM) and vae of a demo pipeline folder, each from_pretrained."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from bench.demo.autoencoder import PixelAutoencoder

    folder = Path(folder)
    return dict(
        unet=UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval(),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").to(device).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
        vae=PixelAutoencoder.from_pretrained(folder / "vae").to(device),
    )


@torch.no_grad()
def generate(components: dict, prompts: list[str], seed: int = 0, steps: int = 25, guidance_scale: float = 2.0,
             batch_size: int = 600, indices=None) -> np.ndarray:
    """uint8 NHWC RGB samples of a demo pipeline's components through ``bench.sampling``.

    ``steps == 1`` is the one-step model (``onestep_x0`` at t = 999, no guidance); otherwise the DDIM loop of
    ``bench.sampling.denoise``. Sample i uses ``sample_noise(seed, [indices[i]])``.
    """
    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    scheduler, vae = components["scheduler"], components["vae"]
    device = unet.device
    indices = list(range(len(prompts))) if indices is None else list(indices)
    unique = sorted(set(prompts) | {EMPTY_PROMPT})
    table = encode_prompts(tokenizer, text_encoder, unique)
    row = {p: i for i, p in enumerate(unique)}
    abar = sampling.alphas_cumprod(scheduler.config)
    timestep = sampling.onestep_timestep(scheduler.config)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        noise = sampling.sample_noise(seed, indices[start:start + batch_size], shape).to(device)
        cond = table[[row[p] for p in chunk]]
        if steps == 1:
            latents = sampling.onestep_x0(unet, noise, cond, float(abar[timestep]), timestep)
        else:
            uncond = table[[row[EMPTY_PROMPT]] * len(chunk)]
            latents = sampling.denoise(unet, scheduler, noise, cond, uncond, steps, guidance_scale)
        image = vae.decode(latents / vae.config.scaling_factor).sample
        out.append(to_uint8(image))
    return np.concatenate(out)


class UsedRows(torch.nn.Module):
    """The rows of a token-embedding table that ``ids`` use, trained in its place.

    The other rows of CLIP's 49,408 never reach an output, so their gradient is zero; leaving them out of the
    optimizer, the EMA and the gradient all-reduce makes the same updates of the rows that matter at a third of
    the parameters. ``write_back`` puts the trained rows into the full table (the others keep their init).
    """

    def __init__(self, table: torch.nn.Embedding, ids: torch.Tensor):
        super().__init__()
        self.register_buffer("rows", torch.unique(ids), persistent=False)
        lookup = torch.full((table.num_embeddings,), -1, dtype=torch.long)
        lookup[self.rows] = torch.arange(len(self.rows))
        self.register_buffer("lookup", lookup, persistent=False)
        self.weight = torch.nn.Parameter(table.weight.detach()[self.rows].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(self.lookup[ids], self.weight)

    def write_back(self, table: torch.nn.Embedding) -> torch.nn.Embedding:
        with torch.no_grad():
            table.weight[self.rows] = self.weight
        return table


def write_pipeline(out_dir: str | Path, unet, text_encoder, tokenizer_dir: str | Path, context_length: int) -> None:
    """A ``StableDiffusionPipeline`` folder: model_index.json and unet/ text_encoder/ tokenizer/ scheduler/ vae/.

    The tokenizer is ``tokenizer_dir``'s files with ``model_max_length`` set to the text encoder's context."""
    import diffusers
    from diffusers import DDIMScheduler

    from bench.demo.autoencoder import PixelAutoencoder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
    shutil.copytree(tokenizer_dir, out_dir / "tokenizer", dirs_exist_ok=True)
    tokenizer_config = out_dir / "tokenizer" / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()),
                                            "model_max_length": context_length}, indent=2) + "\n")
    DDIMScheduler(**scheduler_config()).save_pretrained(out_dir / "scheduler")
    PixelAutoencoder().save_pretrained(out_dir / "vae", safe_serialization=True)
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["bench.demo.autoencoder", "PixelAutoencoder"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")


def update(loss: torch.Tensor, optimizer, params: list, ema, lr_schedule=None, average_over: int = 1) -> None:
    """One optimizer step with grad clip 1 and the EMA update (the teacher's and the regression student's).

    ``average_over > 1``: the gradients (and ``loss``, for the log) are first averaged over that many processes,
    each of which computed its loss on an equal slice of the batch.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average_over > 1:
        _average(params, loss, average_over)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    if lr_schedule is not None:
        lr_schedule.step()
    ema.step(params)


def _average(params: list, loss: torch.Tensor, processes: int) -> None:
    """All-reduce the gradients and the loss in one flat buffer (gloo), divided by the number of processes."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
    dist.all_reduce(flat)
    flat /= processes
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g)
        offset += g.numel()
    loss.data.copy_(flat[-1])


def progress(name: str, step: int, steps: int, loss: torch.Tensor, running: float | None, start: float, log) -> float:
    """The running loss, logged eight times over a training."""
    running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
    if (step + 1) % max(1, steps // 8) == 0 or step + 1 == steps:
        elapsed = time.time() - start
        log(f"{name} step {step + 1}/{steps} loss {running:.4f} ({elapsed:.0f} s, {elapsed / (step + 1):.3f} s/step)")
    return running


def _lr_lambda(config: TeacherConfig):
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        floor = config.lr_min / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train_teacher(out_dir: str | Path, tokenizer_dir: str | Path, config: TeacherConfig = TeacherConfig(),
                  log=log_stderr, processes: int = 1) -> Path:
    """Train the teacher from scratch and write its pipeline folder (EMA weights) to ``out_dir``.

    ``processes > 1`` splits every batch over that many CPU processes (one thread each, gloo; ``log`` must then
    be picklable): each draws the whole batch from the same generator, computes the loss of its own slice, and
    the gradients are averaged, so the updates are those of one process up to float rounding. Writes into
    ``out_dir`` directly; callers that need atomicity pass a temporary folder and rename it.
    """
    if config.batch_size % processes:
        raise ValueError(f"batch size {config.batch_size} does not split over {processes} processes")
    start = time.time()
    if processes == 1:
        _train_rank(0, 1, None, out_dir, tokenizer_dir, config, log)
    else:
        import tempfile

        import torch.multiprocessing

        with tempfile.TemporaryDirectory() as rendezvous:
            torch.multiprocessing.spawn(_train_rank, nprocs=processes, args=(
                processes, Path(rendezvous) / "store", out_dir, tokenizer_dir, config, log))
    seconds = time.time() - start
    marker = dict(artefact="teacher", config=asdict(config), processes=processes, train_seconds=round(seconds, 1))
    (Path(out_dir) / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log(f"teacher trained in {seconds:.0f} s ({processes} process{'es' if processes > 1 else ''}) -> {out_dir}")
    return Path(out_dir)


def _train_rank(rank: int, processes: int, rendezvous: Path | None, out_dir, tokenizer_dir, config: TeacherConfig,
                log) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTokenizer

    if processes > 1:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=processes)
    start = time.time()
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=config.context_length)
    unet, text_encoder = build_unet(config), build_text_encoder(config)
    unet.train()
    text_encoder.train()
    ids = tokenize(tokenizer, list(PROMPTS) + [EMPTY_PROMPT])  # row 10 is the empty prompt
    token_table = text_encoder.get_input_embeddings()
    text_encoder.set_input_embeddings(UsedRows(token_table, ids))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=config.ema_decay, foreach=True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, foreach=True)  # torch's CPU default loops per tensor
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    noise_scheduler = DDPMScheduler(**{k: v for k, v in scheduler_config().items()
                                       if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")})

    images, labels = digits()
    images, labels = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(config.seed)
    mine = slice(rank * config.batch_size // processes, (rank + 1) * config.batch_size // processes)
    running = None
    for step in range(config.steps):
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x0, label = images[batch], labels[batch].clone()
        label[torch.rand(config.batch_size, generator=generator) < config.uncond_prob] = 10
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
        x0, label, noise, t = x0[mine], label[mine], noise[mine], t[mine]
        noisy = noise_scheduler.add_noise(x0, noise, t)
        cond = text_encoder(ids)[0][label]  # the 11 distinct prompts once, then gathered per sample
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, noise)
        update(loss, optimizer, params, ema, lr_schedule, average_over=processes)
        if rank == 0:
            running = progress("teacher", step, config.steps, loss, running, start, log)
    if rank == 0:
        ema.copy_to(params)
        text_encoder.set_input_embeddings(text_encoder.get_input_embeddings().write_back(token_table))
        unet.eval()
        text_encoder.eval()
        write_pipeline(out_dir, unet, text_encoder, tokenizer_dir, config.context_length)
    if processes > 1:
        dist.destroy_process_group()
