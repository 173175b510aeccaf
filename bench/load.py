"""Load a ModelSpec into torch modules: HF id or local folder, UNet overrides, LoRA adapters.

Accepted layouts (docs/architecture.md): a diffusers pipeline (``model_index.json``), a UNet
folder (``config.json`` of a UNet2DConditionModel), a folder holding ``unet_ema/`` (SwiftBrush v2's
release, ``distill.train``'s output), and a PEFT LoRA adapter (``adapter_config.json``) fused into its
base UNet. Weights are read with safetensors only (``use_safetensors=True``); nothing is unpickled.
"""

import importlib.metadata
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from bench.errors import UserError
from bench.hashing import file_sha256, folder_sha256
from bench.registry import SD_TURBO, ModelSpec, folder_base, is_weights_file
from bench.sampling import to_device
from bench.store import read_json

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def hide_library_progress_bars() -> None:
    """diffusers and transformers draw a progress bar per checkpoint or pipeline they load; in our CLIs those bars
    bury the run's own progress (a sweep loads a model per point). Their warnings stay on."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@dataclass
class LoadedModel:
    spec: ModelSpec
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    vae: torch.nn.Module
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    sources: dict = field(default_factory=dict)  # component -> where it was loaded from
    weight_hashes: dict = field(default_factory=dict)  # component -> sha256 over its weight files (local only)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)


def resolve_layout(location: str, base: str | None = None) -> tuple[str, str | None, str]:
    """(unet location, unet subfolder, base location) for a source, following the accepted layouts."""
    path = Path(location)
    if not path.is_dir():
        if path.exists() or location.startswith((".", "/", "~")) or location.count("/") > 1:
            raise UserError(f"model folder {location!r} does not exist: check the path, or pass an HF id")
        return location, "unet", base or location  # an HF id: a full pipeline repo
    if (path / "model_index.json").exists():
        return location, "unet", base or location
    default_base = base or folder_base(path) or SD_TURBO
    if (path / "unet_ema" / "config.json").exists():
        return location, "unet_ema", default_base
    config = read_json(path / "config.json") or {}
    if config.get("_class_name") == "UNet2DConditionModel":
        return location, None, default_base
    raise UserError(
        f"{location!r} is neither a diffusers pipeline (model_index.json), a UNet folder (config.json) "
        "nor a folder with unet_ema/: point NAME=PATH at one of these"
    )


@contextmanager
def guard(what: str, location: str, fix: str):
    """A library failure while loading (missing folder, no network, corrupt weights) as one line naming what,
    where, the library's reason and ``fix``."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        text = str(error).strip()
        reason = text.splitlines()[0][:200] if text else type(error).__name__
        raise UserError(f"cannot load the {what} from {location!r} ({reason}); {fix}") from error


def _loading(what: str, location: str, spec: ModelSpec):
    return guard(f"{what} of model {spec.name!r}", location, spec.hint or f"pass {spec.name}=PATH with a local copy")


def fuse_lora(unet: torch.nn.Module, adapter_dir: str) -> torch.nn.Module:
    """Fuse a PEFT LoRA adapter folder into ``unet``'s dense weights and drop the adapter."""
    from peft import PeftModel

    return PeftModel.from_pretrained(unet, adapter_dir).merge_and_unload()


def load_unet(location: str, subfolder: str | None = None, dtype: torch.dtype = torch.float32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(location, subfolder=subfolder, torch_dtype=dtype, use_safetensors=True)


# Autoencoder classes a model folder's ``vae/config.json`` may name. Plug-ins add theirs with
# ``register_autoencoder`` or, to be found in any process without an import, under the ``bench.autoencoders``
# entry-point group (the demo world's PixelAutoencoder is declared there in pyproject.toml).
AUTOENCODERS: dict[str, type] = {}


def register_autoencoder(name: str, cls: type) -> None:
    AUTOENCODERS[name] = cls


def autoencoder_class(name: str, location: str) -> type:
    import diffusers

    if name in ("AutoencoderKL", "AutoencoderTiny"):
        return getattr(diffusers, name)
    if name not in AUTOENCODERS:
        for entry in importlib.metadata.entry_points(group="bench.autoencoders", name=name):
            register_autoencoder(name, entry.load())
    if name not in AUTOENCODERS:
        known = ", ".join(["AutoencoderKL", "AutoencoderTiny", *sorted(AUTOENCODERS)])
        raise UserError(f"{location}/vae: unsupported autoencoder class {name!r} ({known}); a plug-in registers its "
                        "own with bench.load.register_autoencoder")
    return AUTOENCODERS[name]


def load_vae(location: str, dtype: torch.dtype = torch.float32):
    config = read_json(Path(location) / "vae" / "config.json") or {"_class_name": "AutoencoderKL"}
    cls = autoencoder_class(config.get("_class_name", "AutoencoderKL"), location)
    return cls.from_pretrained(location, subfolder="vae", torch_dtype=dtype, use_safetensors=True)


def load_scheduler_config(location: str) -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler.load_config(location, subfolder="scheduler"))


def load_text(location: str, dtype: torch.dtype = torch.float32):
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", torch_dtype=dtype,
                                                 use_safetensors=True)
    return load_tokenizer(location), text_encoder


def load_tokenizer(location: str):
    """The ``CLIPTokenizer`` under ``location``'s ``tokenizer/``, parsed once per process while its files are
    unchanged: parsing CLIP's vocabulary and merges is slow, and a run loads each model several times (its
    settings, its samples, its thumbnails), while a sweep's points and a suite's students share one tokenizer."""
    folder = Path(location) / "tokenizer"
    if not folder.is_dir():  # a Hub id: its cache decides what from_pretrained reads
        return _parsed_tokenizer(location, None)
    stats = [(f.name, f.stat()) for f in sorted(folder.iterdir()) if f.is_file()]
    stamp = tuple((name, stat.st_mtime_ns, stat.st_size) for name, stat in stats)
    return _parsed_tokenizer(str(Path(location).resolve()), stamp)


@lru_cache(maxsize=16)
def _parsed_tokenizer(location: str, stamp: tuple | None):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(location, subfolder="tokenizer")


def load_spec_unet(spec: ModelSpec, dtype: torch.dtype = torch.float32, unet_location: str | None = None,
                   unet_subfolder: str | None = None):
    """The UNet a spec names (its source's, a replacement folder, or the source's with a LoRA fused)."""
    if unet_location is None:
        with _loading("folder", spec.source, spec):
            unet_location, unet_subfolder, _ = resolve_layout(spec.source, spec.base)
    with _loading("UNet", spec.unet or unet_location, spec):
        if spec.unet and (Path(spec.unet) / "adapter_config.json").exists():
            # Fused in float32, then cast: the LoRA delta is small beside the base weights.
            return fuse_lora(load_unet(unet_location, unet_subfolder), spec.unet).to(dtype)
        if spec.unet and is_weights_file(spec.unet):
            return load_unet_file(spec.unet, unet_location, unet_subfolder).to(dtype)
        return load_unet(spec.unet or unet_location, None if spec.unet else unet_subfolder, dtype=dtype)


def load_unet_file(file: str, config_location: str, config_subfolder: str | None):
    """A UNet from a bare state-dict file (a local path, or ``org/name/path/in/repo`` on the Hub) and the config of
    the base's UNet: safetensors, or ``torch.load(weights_only=True)`` for ``.bin`` (nothing is unpickled). A
    ``module.`` prefix (a DDP wrapper's save) is dropped."""
    from diffusers import UNet2DConditionModel

    path = Path(file)
    if not path.is_file():
        if path.exists() or file.startswith((".", "/", "~")) or file.count("/") < 2:
            raise UserError(f"UNet weights file {file!r} not found: pass a local file or org/name/path/in/repo")
        from huggingface_hub import hf_hub_download

        org, name, filename = file.split("/", 2)
        path = Path(hf_hub_download(f"{org}/{name}", filename))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    config = UNet2DConditionModel.load_config(config_location, subfolder=config_subfolder)
    unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(state, strict=True)
    return unet


def _weights_locations(spec: ModelSpec) -> tuple[str, str | None, str]:
    if not spec.source:
        raise UserError(f"model {spec.name!r} has no weights location: {spec.hint or f'pass {spec.name}=PATH'}")
    with _loading("folder", spec.source, spec):
        return resolve_layout(spec.source, spec.base)


def weights_identity(spec: ModelSpec, cache_dir: str | Path | None = None) -> dict:
    """What a model's samples depend on besides its settings: for the UNet (or LoRA adapter) and the base, the
    sha256 of a local folder's weights, or the hub id itself. The same path holding retrained weights differs."""
    unet_location, subfolder, base = _weights_locations(spec)
    unet = spec.unet or str(Path(unet_location) / (subfolder or ""))
    return {part: weights_digest(where, cache_dir) or str(where) for part, where in (("unet", unet), ("base", base))}


def weights_digest(location: str, cache_dir: str | Path | None = None) -> str | None:
    """sha256 of a local weights file or folder; None for a hub id."""
    return file_sha256(location, cache_dir) if Path(location).is_file() else folder_sha256(location, cache_dir)


def effective_dtype(spec: ModelSpec, device: str | torch.device, dtype: str | None = None) -> torch.dtype:
    """The dtype a model is run in: ``dtype`` or the spec's, except float32 on a CPU (half-precision convolutions
    there are slow or unsupported)."""
    return DTYPES[dtype or spec.dtype] if torch.device(device).type != "cpu" else torch.float32


def load_model(spec: ModelSpec, device: str | torch.device = "cpu", dtype: str | None = None) -> LoadedModel:
    """Every module a sampler needs, frozen, in eval mode, on ``device``, in ``effective_dtype``."""
    device = torch.device(device)
    torch_dtype = effective_dtype(spec, device, dtype)
    unet_location, unet_subfolder, base = _weights_locations(spec)
    sources = {"unet": f"{unet_location}/{unet_subfolder}" if unet_subfolder else unet_location, "base": base}

    unet = load_spec_unet(spec, torch_dtype, unet_location, unet_subfolder)
    if spec.unet:
        sources["unet"] = spec.unet
    with _loading("text encoder and tokenizer", base, spec):
        tokenizer, text_encoder = load_text(base, torch_dtype)
    with _loading("VAE", base, spec):
        vae = load_vae(base, torch_dtype)
    with _loading("scheduler", base, spec):
        scheduler_config = load_scheduler_config(base)

    for module in (unet, text_encoder, vae):
        module.requires_grad_(False).eval().to(device)
    hashes = {name: weights_digest(str(where)) for name, where in
              [("unet", spec.unet or (Path(unet_location) / (unet_subfolder or ""))), ("base", base)]}
    return LoadedModel(spec, unet, text_encoder, tokenizer, vae, scheduler_config, device, torch_dtype, sources,
                       {k: v for k, v in hashes.items() if v})


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """SD 2.x conditioning: the text encoder's last hidden state over 77 padded tokens, no attention mask."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(to_device(ids, text_encoder.device))[0]
