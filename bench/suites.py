"""What a run evaluates: the options (``RunConfig``), resolved once against a suite (``Suite``).

A suite owns a protocol (captions, reference images, preprocessing), its model registry and default models, the
feature extractors of each metric role, and the defaults of n, batch and shard size. Suites are looked up by name
in ``SUITES``; each entry names its factory as ``module:function``, imported only when the suite is used, so the
COCO path never imports the demo world.
"""

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import changed_from_default, option, refuse_unused
from bench.errors import UserError
from bench.protocol import Protocol
from bench.registry import MODELS, ModelSpec
from bench.scores import COCO, PR_K, Scorer


@dataclass(frozen=True)
class RunConfig:
    suite: str = option("coco", "protocol and default models", choices=["coco", "demo", "hpsv2"])
    models: str | None = option(None, "comma-separated registry names or NAME=PATH_OR_HF_ID entries")
    coco: str | None = option(None, "COCO folder with annotations/captions_val2014.json and val2014/ (or .zip)")
    captions: str | None = option(None, "caption list: .txt (one per line) or SwiftBrush v2's dataset.json")
    preset: str = option("sbv2", "caption selection from COCO", choices=["sbv2", "random"])
    n: int | None = option(None, "number of samples (coco: 30000; demo: 1800)")
    seed: int = option(0, "noise seed; sample i has its own generator seeded by (seed, i)")
    seeds: str | None = option(None, "more noise seeds to evaluate every model on, e.g. 1,2: one store each; the "
                                     "table adds each metric's mean and std over all seeds")
    diversity: int = option(0, "K extra seeds for a fixed subset of the captions: per-prompt diversity (mean pairwise "
                               "distance of CLIP and Inception features), 0 = off")
    diversity_prompts: int | None = option(None, "captions in the diversity subset (default: 10%% of --n / K)")
    caption_seed: int = option(0, "seed of the 'random' caption preset")
    batch_size: int | None = option(None, "samples per generation batch (coco: 16; demo: 100)")
    shard_size: int | None = option(None, "samples per stored shard (coco: 1000; demo: 200)")
    out: str | None = option(None, "run folder (default results/<suite>)")
    report: str | None = option(None, "markdown report path (default reports/<run folder name>.md)")
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")
    processes: int | None = option(None, "CPU processes that share the generation, one thread each (default: the "
                                         "demo suite's one per core up to 2, else 1); for GPUs use accelerate launch")
    dtype: str | None = option(None, "generation dtype (default: the model's)",
                               choices=["float16", "bfloat16", "float32"])
    compile: bool | None = option(None, "torch.compile the UNet and VAE decoder (default: on a GPU; a failed compile "
                                        "falls back to eager with a warning)")
    fid_features: str | None = option(None, "FID extractor: a registered name or module:factory (coco: inception)")
    clip_features: str | None = option(None, "CLIP-score extractor (coco: clip = open_clip ViT-g-14)")
    pr_features: str | None = option(None, "precision/recall features: adm = ADM-evaluator-like (BGR, TF resize; "
                                              "the paper's; default with the default FID extractor) or clean = the "
                                              "FID features (default with --fid-features)",
                                     choices=["clean", "adm"])
    inception_weights: str | None = option(None, "inception-2015-12-05.pt (TorchScript); or set BENCH_WEIGHTS_DIR")
    clip_weights: str | None = option(None, "open_clip checkpoint file for --clip-model; or set BENCH_WEIGHTS_DIR")
    clip_model: str = option("ViT-g-14", "open_clip model name for the CLIP score")
    clip_pretrained: str = option("laion2b_s12b_b42k", "open_clip pretrained tag")
    clip_precision: str = option("fp32", "CLIP tower precision; fp16 is ~4x faster on a GPU and recorded in the "
                                         "extractor id", choices=["fp32", "fp16", "bf16"])
    cache_dir: str = option("results/cache", "feature cache (reference and text features)")
    metrics_only: bool = option(False, "recompute metrics from the store; generate nothing")
    save_images: bool = option(False, "also write 512 px PNGs (background pool)")
    max_nonfinite: float = option(0.001, "fail when more than this fraction of samples decode to NaN/inf (they "
                                         "never reach a metric)")
    grid: int = option(8, "images per model in the report grid")
    gallery: int | None = option(None, "captions in the HTML report's side-by-side viewer (coco: 300, 256 px WebP, "
                                        "~12 KB each)")
    quick: bool = option(False, "demo suite: the reduced CI variant (short training)")
    hps_prompts: str | None = option(None, "hpsv2 suite: folder of anime.json, concept-art.json, paintings.json, "
                                           "photo.json (HPD v2's benchmark/)")
    hps_weights: str | None = option(None, "hpsv2 suite: HPS_v2_compressed.pt or HPS_v2.1_compressed.pt; or put it "
                                           "in BENCH_WEIGHTS_DIR")


@dataclass(frozen=True)
class SweepSpec:
    """A weight-interpolation sweep a suite's default run adds (Figure 3): A at w = 0, B at w = 1."""

    a: str
    b: str
    lams: str  # grid of w: start:stop:step or a comma list

    @property
    def name(self) -> str:
        return f"sweep-{self.a}-{self.b}"


@dataclass(frozen=True)
class Suite:
    name: str
    title: str  # the report's heading
    protocol: Protocol
    registry: Mapping[str, ModelSpec]
    default_models: tuple[str, ...]
    extractors: Mapping[str, tuple[str, dict]]  # metric role ("fid", "clip", "pr") -> (extractor name, options)
    out: Path  # default run folder; the report defaults to reports/<its name>.md
    batch_size: int
    shard_size: int
    gallery: int = 300  # captions in the HTML report's side-by-side viewer
    processes: int = 1  # CPU processes that generate (bench.processes) unless --processes says otherwise
    notes: str = ""  # printed under the table
    sweeps: tuple[SweepSpec, ...] = ()
    scorer: Scorer = COCO  # what is measured, the table's columns and the paper's numbers beside them
    card: Mapping[str, object] = field(default_factory=dict)  # the protocol card's suite lines (bench.card)
    paper_protocol: Mapping[str, tuple] = field(default_factory=dict)  # card label -> the paper's accepted values


@dataclass(frozen=True)
class SuiteEntry:
    factory: str  # "module:function(config) -> Suite", imported on use
    options: tuple[str, ...]  # the suite-specific RunConfig fields it reads; setting another suite's is an error


COCO_OPTIONS = ("coco", "captions", "preset", "caption_seed", "fid_features", "clip_features", "pr_features",
                "inception_weights", "clip_weights", "clip_model", "clip_pretrained", "clip_precision")
SUITES: dict[str, SuiteEntry] = {
    "coco": SuiteEntry("bench.suites:coco_suite", COCO_OPTIONS),
    "demo": SuiteEntry("bench.demo.suite:demo_suite", ("quick",)),
    "hpsv2": SuiteEntry("bench.hpsv2:hpsv2_suite", ("hps_prompts", "hps_weights")),
}


def extra_seeds(config: RunConfig) -> list[int]:
    """The distinct ``--seeds`` other than ``--seed``, in order; a malformed or empty list is one line."""
    try:
        seeds = [int(s) for s in config.seeds.split(",") if s.strip()] if config.seeds else []
    except ValueError:
        raise UserError(f"--seeds {config.seeds!r}: expected comma-separated integers, e.g. 1,2") from None
    if config.seeds and not seeds:
        raise UserError("--seeds is empty: name at least one seed, e.g. 1,2")
    return [seed for seed in dict.fromkeys(seeds) if seed != config.seed]


def check(config: RunConfig) -> None:
    """Options that no suite could use, or that this suite would silently ignore: one line each."""
    for name in ("n", "batch_size", "shard_size", "grid", "gallery", "processes"):
        value = getattr(config, name)
        if value is not None and value < (0 if name in ("grid", "gallery") else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if config.n is not None and config.n <= PR_K:
        raise UserError(f"--n {config.n}: precision/recall with k = {PR_K} needs more than {PR_K} samples")
    extra_seeds(config)
    if config.diversity == 1 or config.diversity < 0:
        raise UserError(f"--diversity {config.diversity}: K seeds per prompt need K >= 2 (0 turns it off)")
    if config.diversity_prompts is not None and (config.diversity_prompts < 2 or not config.diversity):
        raise UserError("--diversity-prompts needs --diversity K and at least 2 prompts")
    if not 0 <= config.max_nonfinite <= 1:
        raise UserError(f"--max-nonfinite is a fraction in [0, 1], got {config.max_nonfinite}")
    if config.suite not in SUITES:
        raise UserError(f"unknown suite {config.suite!r}: choose one of {', '.join(SUITES)}")
    own = SUITES[config.suite].options
    others = [name for entry in SUITES.values() for name in entry.options if name not in own]
    if used := changed_from_default(config, dict.fromkeys(others)):
        raise UserError(f"{', '.join(used)} do not apply to --suite {config.suite}: drop them")


def build(config: RunConfig) -> tuple[Suite, RunConfig]:
    """The suite ``config`` names, and ``config`` with every default the suite supplies filled in."""
    check(config)
    module, attr = SUITES[config.suite].factory.split(":")
    suite = getattr(importlib.import_module(module), attr)(config)
    out = config.out or str(suite.out)
    resolved = dataclasses.replace(
        config, n=len(suite.protocol.captions), batch_size=config.batch_size or suite.batch_size,
        shard_size=config.shard_size or suite.shard_size, out=out, processes=config.processes or suite.processes,
        gallery=config.gallery if config.gallery is not None else suite.gallery,
        report=config.report or str(Path("reports") / f"{Path(out).name}.md"))
    return suite, resolved


def coco_suite(config: RunConfig) -> Suite:
    """COCO-2014 30K as SwiftBrush v2 evaluates it (``docs/protocol.md``)."""
    from bench.protocol import coco_protocol

    if config.captions:
        refuse_unused(config, ["preset", "caption_seed"], "choose captions from COCO's annotations; --captions gives "
                      "the list itself: drop them")
    if not config.coco and not config.captions:
        raise UserError("the coco suite needs --coco DIR (annotations + val2014) or --captions FILE with --coco for "
                        "the reference images; for the offline demo use --suite demo")
    protocol = coco_protocol(config.coco, captions_file=config.captions, preset=config.preset, n=config.n or 30000,
                             seed=config.caption_seed)
    # The paper's precision/recall come from the ADM evaluator's Inception; with a user's own FID extractor, its
    # features serve both unless --pr-features adm asks for Inception too.
    pr_features = config.pr_features or ("clean" if config.fid_features else "adm")
    extractors = {
        "fid": (config.fid_features or "inception", {"weights": config.inception_weights}),
        "clip": (config.clip_features or "clip", {"weights": config.clip_weights, "model": config.clip_model,
                                                  "pretrained": config.clip_pretrained,
                                                  "precision": config.clip_precision}),
    }
    if pr_features == "adm":
        extractors["pr"] = ("inception-adm", {"weights": config.inception_weights})
    card = {
        "captions": (f"file {Path(config.captions).name}" if config.captions else f"{config.preset} preset"
                     + (f", seed {config.caption_seed}" if config.preset == "random" else "")),
        "samples per model": len(protocol.captions),
        "reference images": protocol.reference.count,
        "resize": f"centre crop, PIL LANCZOS to {protocol.metric_resolution} px",
        "FID features": extractors["fid"][0],
        "precision/recall features": f"{extractors.get('pr', extractors['fid'])[0]}, k = {PR_K}",
        "CLIP model": (f"{config.clip_model} / {config.clip_pretrained}, {config.clip_precision}"
                       if not config.clip_features else config.clip_features),
        "CLIP prefix": repr(protocol.clip_prefix),
    }
    return Suite(name="coco", title="COCO-2014 30K, SwiftBrush v2 Table 1", protocol=protocol, registry=dict(MODELS),
                 default_models=("sdturbo", "swiftbrush", "merged"), extractors=extractors,
                 out=Path("results/coco"), batch_size=16, shard_size=1000,
                 notes="Paper numbers: SwiftBrush v2 (arXiv 2408.14176) Table 1 / Table 3. "
                       "FID is biased by sample count: compare only at N = 30,000.",
                 card=card, paper_protocol=PAPER_PROTOCOL)


# SwiftBrush v2's evaluation (docs/protocol.md), in the card's labels: a value outside these is flagged.
PAPER_PROTOCOL = {
    "captions": ("sbv2 preset", "file dataset.json"),
    "samples per model": (30000,),
    "reference images": (40504,),
    "resize": ("centre crop, PIL LANCZOS to 256 px",),
    "FID features": ("inception",),
    "precision/recall features": (f"inception-adm, k = {PR_K}",),
    "CLIP model": ("ViT-g-14 / laion2b_s12b_b42k, fp32",),
    "CLIP prefix": (repr("A photo depicts "),),
    "dtype": ("float32",),
}
