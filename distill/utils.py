"""Pieces of ``distill.train`` that are not the training loop: data order, text cache,
checkpoint files, real (noise, image) pairs, image grids.

Checkpoints hold no pickled objects: weights are safetensors; optimizer and RNG states are
``torch.save`` dicts of tensors and plain Python values, read back with ``torch.load(weights_only=True)``.
"""

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bench.errors import UserError

# ------------------------------------------------------------------------------------------- data order


def batch_indices(step: int, count: int, batch_size: int, seed: int, num_processes: int = 1,
                  process_index: int = 0) -> np.ndarray:
    """Prompt indices of one process at ``step``: a pure function of the step, so resuming needs no state.

    The global order is an endless sequence of epochs, each a permutation seeded by (seed, epoch);
    a step takes the next ``batch_size * num_processes`` entries, and each process its own slice.
    """
    start = (step * num_processes + process_index) * batch_size
    positions = np.arange(start, start + batch_size)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(positions // count):
        order = np.random.default_rng([seed, int(epoch)]).permutation(count)
        here = positions // count == epoch
        out[here] = order[positions[here] % count]
    return out


# ------------------------------------------------------------------------------------------- text cache


def cached_embeddings(cache_dir: str | Path, key: dict, texts: list[str], encode, batch_size: int = 256,
                      dtype: str = "float16") -> np.ndarray:
    """``encode(texts)`` stacked into an ``.npy`` file keyed by the texts and ``key``, memory-mapped back.

    ``key`` names what else changes the embeddings (the encoder's location and weight hash). The file
    is written under a temporary name and renamed, so a killed run never leaves a partial cache.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = Path(cache_dir) / f"{digest.hexdigest()[:24]}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        first = encode(texts[:batch_size]).float().cpu().numpy()
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(texts), *first.shape[1:]))
        array[: len(first)] = first
        for start in range(batch_size, len(texts), batch_size):
            array[start:start + batch_size] = encode(texts[start:start + batch_size]).float().cpu().numpy()
        array.flush()
        del array
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({**key, "count": len(texts)}, indent=1))
    return np.load(path, mmap_mode="r")


class EncodedOnDemand:
    """``texts`` encoded when a batch of rows is asked for: the cache's interface without its disk. SD 2.1's
    77 x 1024 fp16 embeddings take 158 KB per prompt, 218 GB for a 1.38 M-prompt set."""

    def __init__(self, texts: list[str], encode):
        self.texts, self.encode = texts, encode

    def __len__(self) -> int:
        return len(self.texts)

    @torch.no_grad()
    def __getitem__(self, indices) -> torch.Tensor:
        return self.encode([self.texts[i] for i in np.atleast_1d(indices)])


# ------------------------------------------------------------------------------------------ checkpoints


def save_tensors(path: Path, named: dict[str, torch.Tensor]) -> None:
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in named.items()}, str(path))


def load_tensors_into(path: Path, named: dict[str, torch.Tensor]) -> None:
    """Copy a safetensors file into existing tensors (parameters), refusing missing or extra names."""
    stored = load_file(str(path))
    if stored.keys() != named.keys():
        missing, extra = sorted(named.keys() - stored.keys()), sorted(stored.keys() - named.keys())
        raise UserError(f"{path}: tensors do not match this run (missing {missing[:3]}, unexpected {extra[:3]}); "
                        "resume with the settings the checkpoint was made with")
    with torch.no_grad():
        for name, tensor in named.items():
            tensor.copy_(stored[name])


def rng_state() -> dict:
    """Every random state a step consumes: python, numpy, torch CPU and CUDA (weights_only-loadable)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                     "pos": position, "has_gauss": has_gauss, "gauss": gauss},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-<step>`` folders under ``folder``, oldest first (unfinished ``.tmp`` ones excluded)."""
    found = [p for p in Path(folder).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune_checkpoints(folder: Path, limit: int) -> None:
    for old in list_checkpoints(folder)[:-limit] if limit > 0 else []:
        shutil.rmtree(old)


# --------------------------------------------------------------------------------------- model helpers


def loading(what: str, location: str, option: str, hint: str = ""):
    """A failed ``from_pretrained`` (missing folder, no network, corrupt files) as one line naming the option."""
    from bench.load import guard

    return guard(what, location, f"pass {option} with a local folder{hint}")


@contextlib.contextmanager
def adapters_disabled(unet):
    """The frozen teacher from a UNet carrying the fake teacher's LoRA (SwiftBrush's one-object trick).

    peft's ``enable_adapters`` also sets ``requires_grad`` back on the LoRA weights, which the fake
    teacher's optimizer needs (``disable_adapters`` had cleared it).
    """
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


# ----------------------------------------------------------------------------------------------------- EMA


def lora_layers(model: torch.nn.Module) -> dict:
    """The LoRA-adapted layers of a PEFT model, keyed by the name of the dense weight they adapt."""
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix("base_model.model.") + ".weight": module for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and hasattr(module, "base_layer")}


def effective_weight(layer, adapter: str = "default") -> torch.Tensor:
    """What a LoRA layer computes with: W + scale * B @ A (peft's ``get_delta_weight``)."""
    return layer.base_layer.weight + layer.get_delta_weight(adapter)


class StudentEMA:
    """The EMA of what the student computes with, by diffusers' ``EMAModel`` (decay warm-up (1 + n) / (10 + n)).

    Full scheme: its weights. LoRA scheme: the effective weight W + scale * B @ A of every adapted layer, since the
    EMA of a product is not the product of the EMAs of its factors; the merge and the bench use dense weights.
    """

    def __init__(self, student: torch.nn.Module, params: dict, decay: float, lora: bool):
        from diffusers.training_utils import EMAModel

        self.params, self.layers = params, lora_layers(student) if lora else None
        self.ema = EMAModel(self._current(), decay=decay, foreach=True)

    def _current(self) -> list:
        if self.layers is None:
            return list(self.params.values())
        with torch.no_grad():  # fresh leaves: EMAModel averages parameters that require grad
            return [torch.nn.Parameter(effective_weight(layer)) for layer in self.layers.values()]

    def step(self) -> None:
        self.ema.step(self._current())

    def named_shadow(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.layers or self.params, self.ema.shadow_params))

    def state(self) -> dict:
        return {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}

    def load(self, tensors: Path, state: dict) -> None:
        load_tensors_into(tensors, self.named_shadow())
        self.ema.load_state_dict({**state, "shadow_params": self.ema.shadow_params})

    @contextlib.contextmanager
    def applied(self, student: torch.nn.Module):
        """Inside the block the student computes with the EMA weights (LoRA: dense EMA weights, adapters off)."""
        if self.layers is None:
            self.ema.store(self.params.values())
            self.ema.copy_to(self.params.values())
            try:
                yield
            finally:
                self.ema.restore(self.params.values())
            return
        saved = [layer.base_layer.weight.detach().clone() for layer in self.layers.values()]
        with torch.no_grad():
            for layer, shadow in zip(self.layers.values(), self.ema.shadow_params):
                layer.base_layer.weight.copy_(shadow)
        try:
            with student.disable_adapter():
                yield
        finally:
            with torch.no_grad():
                for layer, weight in zip(self.layers.values(), saved):
                    layer.base_layer.weight.copy_(weight)


# ------------------------------------------------------------------------------------ real (noise, x0) pairs


def write_real_pairs(path: str | Path, noise: torch.Tensor, x0: torch.Tensor, prompts: list[str]) -> None:
    """A ``--real-data`` file: ``noise`` and ``x0`` (N, C, H, W) in the student's latent space (x0 is what
    the one-step student should output for that noise and prompt, e.g. the teacher's multi-step
    sample), prompts as JSON in the safetensors metadata."""
    if not (noise.shape == x0.shape and noise.shape[0] == len(prompts)):
        raise ValueError(f"noise {tuple(noise.shape)}, x0 {tuple(x0.shape)} and {len(prompts)} prompts do not match")
    save_file({"noise": noise.float().contiguous(), "x0": x0.float().contiguous()}, str(path),
              metadata={"prompts": json.dumps(prompts)})


def load_real_pairs(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All ``*.safetensors`` files of a ``--real-data`` folder, concatenated in name order."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise UserError(f"--real-data {str(folder)!r} holds no .safetensors files of (noise, x0) pairs "
                        "(see distill.utils.write_real_pairs)")
    noise, x0, prompts = [], [], []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if not {"noise", "x0"} <= set(f.keys()) or "prompts" not in (f.metadata() or {}):
                raise UserError(f"{file}: a real-data file needs tensors 'noise' and 'x0' and 'prompts' metadata")
            noise.append(f.get_tensor("noise"))
            x0.append(f.get_tensor("x0"))
            prompts += json.loads(f.metadata()["prompts"])
    return torch.cat(noise), torch.cat(x0), prompts


# ------------------------------------------------------------------------------------------------ images


def image_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 (rows*H, cols*W, 3) grid, row-major, blank-padded."""
    count, channels, height, width = images.shape
    cols = -(-count // rows)
    images = images.detach().float().clamp(0, 1).cpu()
    canvas = torch.zeros(rows * cols, 3, height, width)
    canvas[:count] = images.expand(-1, 3, -1, -1) if channels == 1 else images[:, :3]
    grid = canvas.view(rows, cols, 3, height, width).permute(0, 3, 1, 4, 2).reshape(rows * height, cols * width, 3)
    return (grid * 255).round().to(torch.uint8).numpy()
