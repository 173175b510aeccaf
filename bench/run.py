"""``python -m bench.run``: generate, extract features, compute metrics and report, resumably.

Table 1 of SwiftBrush v2 on COCO-2014 30K (``--suite coco``, the default), or the offline digits
world (``--suite demo``). Under ``accelerate launch`` shards are spread over processes and the
metrics are computed once, on the main process, from all shards.
"""

import argparse
import importlib
import json
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from bench import report
from bench.errors import UserError, exit_on_user_error
from bench.registry import MODELS, ModelSpec, resolve
from bench.store import SampleStore, atomic_write_bytes, atomic_write_text

PR_K = 3  # the protocol's neighbourhood size (Kynkäänniemi et al.)
BARRIER_TIMEOUT = timedelta(hours=12)

EPILOG = """examples:
  python -m bench.run --suite demo
  python -m bench.run --models sdturbo,swiftbrush,sbv2=/data/sbv2 --coco /data/coco --out results/table1
  python -m bench.run --models sd21-cfg2=/data/sd21 --captions dataset.json --n 30000 --save-images
  accelerate launch --num_processes 8 -m bench.run --models sdturbo --coco /data/coco
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["coco", "demo"], default="coco", help="protocol and default models")
    p.add_argument("--models", help="comma-separated registry names or NAME=PATH_OR_HF_ID entries")
    p.add_argument("--coco", help="COCO folder with annotations/captions_val2014.json and val2014/ (or .zip)")
    p.add_argument("--captions", help="caption list: .txt (one per line) or SwiftBrush v2's dataset.json")
    p.add_argument("--preset", default="sbv2", choices=["sbv2", "random"], help="caption selection from COCO")
    p.add_argument("--n", type=int, help="number of samples (coco: 30000; demo: 1800)")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed; sample i has its own generator seeded by (seed, i)")
    p.add_argument("--caption-seed", type=int, default=0, help="seed of the 'random' caption preset")
    p.add_argument("--batch-size", type=int, help="samples per generation batch (coco: 16; demo: 100)")
    p.add_argument("--shard-size", type=int, help="samples per stored shard (coco: 1000; demo: 200)")
    p.add_argument("--out", help="run folder (default results/<suite>)")
    p.add_argument("--report", help="markdown report path (default reports/<run folder name>.md)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="generation dtype (default: model's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder")
    p.add_argument("--fid-features", help="FID extractor: a registered name or module:factory (coco: inception)")
    p.add_argument("--clip-features", help="CLIP-score extractor (coco: clip = open_clip ViT-g-14)")
    p.add_argument("--pr-features", choices=["clean", "adm"], default="clean",
                   help="precision/recall features: clean = the FID ones; adm = ADM-evaluator-like (BGR, TF resize)")
    p.add_argument("--inception-weights", help="inception-2015-12-05.pt (TorchScript); or set BENCH_WEIGHTS_DIR")
    p.add_argument("--clip-weights", help="open_clip checkpoint file for --clip-model; or set BENCH_WEIGHTS_DIR")
    p.add_argument("--clip-model", default="ViT-g-14", help="open_clip model name for the CLIP score")
    p.add_argument("--clip-pretrained", default="laion2b_s12b_b42k", help="open_clip pretrained tag")
    p.add_argument("--clip-precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="CLIP tower precision; fp16 is ~4x faster on a GPU and recorded in the extractor id")
    p.add_argument("--cache-dir", default="results/cache", help="feature cache (reference and text features)")
    p.add_argument("--metrics-only", action="store_true", help="recompute metrics from the store; generate nothing")
    p.add_argument("--save-images", action="store_true", help="also write 512 px PNGs (background pool)")
    p.add_argument("--max-nonfinite", type=float, default=0.001,
                   help="fail when more than this fraction of samples decode to NaN/inf (they never reach a metric)")
    p.add_argument("--grid", type=int, default=8, help="images per model in the report grid")
    p.add_argument("--quick", action="store_true", help="demo suite: the reduced CI variant (short training)")
    return p


def check_args(args) -> None:
    for name in ("n", "batch_size", "shard_size", "grid"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "grid" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.n is not None and args.n <= PR_K:
        raise UserError(f"--n {args.n}: precision/recall with k = {PR_K} needs more than {PR_K} samples")
    if not 0 <= args.max_nonfinite <= 1:
        raise UserError(f"--max-nonfinite is a fraction in [0, 1], got {args.max_nonfinite}")


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: the bench runs on cpu or cuda")
    return name


def build_extractor(name: str, **options):
    """A registered extractor name, or ``module:factory`` for a user's own (called with the same options)."""
    from bench import features

    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise UserError(f"feature extractor {name!r} cannot be imported ({error}): check module:factory") \
                from error
        return factory(**options)
    return features.build_extractor(name, **options)


COCO_ONLY = ("coco", "captions", "preset", "caption_seed", "fid_features", "clip_features", "pr_features",
             "inception_weights", "clip_weights", "clip_model", "clip_pretrained", "clip_precision")


def refuse_unused(args, names, why: str) -> None:
    """An option the run would silently ignore is an error: the user believes it applied."""
    defaults = build_parser().parse_args([])
    if used := ["--" + name.replace("_", "-") for name in names if getattr(args, name) != getattr(defaults, name)]:
        raise UserError(f"{', '.join(used)} {why}")


def setup_suite(args) -> SimpleNamespace:
    """The protocol, model registry, default models, extractor settings, run folder and report path."""
    if args.suite == "demo":
        from bench.demo.suite import setup_demo

        refuse_unused(args, COCO_ONLY, "only apply to the coco suite (the demo has its own data and extractors)")
        return setup_demo(args)
    from bench.protocol import coco_protocol

    refuse_unused(args, ["quick"], "only applies to --suite demo")
    if args.captions:
        refuse_unused(args, ["preset", "caption_seed"], "choose captions from COCO's annotations; --captions gives "
                      "the list itself: drop them")

    if not args.coco and not args.captions:
        raise UserError("the coco suite needs --coco DIR (annotations + val2014) or --captions FILE with --coco for "
                        "the reference images; for the offline demo use --suite demo")
    protocol = coco_protocol(args.coco, captions_file=args.captions, preset=args.preset, n=args.n or 30000,
                             seed=args.caption_seed)
    extractors = {
        "fid": (args.fid_features or "inception", {"weights": args.inception_weights}),
        "clip": (args.clip_features or "clip", {"weights": args.clip_weights, "model": args.clip_model,
                                                "pretrained": args.clip_pretrained,
                                                "precision": args.clip_precision}),
    }
    if args.pr_features == "adm":
        extractors["pr"] = ("inception-adm", {"weights": args.inception_weights})
    out = Path(args.out or "results/coco")
    return SimpleNamespace(protocol=protocol, registry=dict(MODELS), defaults=["sdturbo", "swiftbrush", "merged"],
                           extractors=extractors, out=out, report=Path(args.report or f"reports/{out.name}.md"),
                           notes="")


def make_extractors(extractor_options: dict, device: str) -> dict:
    extractors = {}
    for role, (name, options) in extractor_options.items():
        options = {k: v for k, v in options.items() if v is not None}
        extractors[role] = build_extractor(name, device=device, **options)
    return extractors


def grid_indices(n: int, count: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist())) if count else []


def grid_is_current(path: Path, indices: list[int]) -> bool:
    try:
        with np.load(path, allow_pickle=False) as grid:
            return grid["indices"].tolist() == list(indices)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return False


def generate(spec, protocol, store: SampleStore, extractors: dict, args, device: str, rank: int, world: int,
             loader=None) -> dict:
    """Make this process's missing shards (and the grid on the main process); returns timings."""
    from tqdm import tqdm

    from bench.generate import FeaturePipeline, Sampler
    from bench.load import load_model

    grid_path, png_folder = store.root / "grid.npz", store.root / "images"
    missing_features = store.pending(rank, world)
    pending = missing_features
    if args.save_images:  # a shard made without --save-images, or killed before its PNGs, is made again
        pending = [s for s in range(rank, store.num_shards, world) if s in missing_features or any(
            not (png_folder / f"{i:08d}.png").exists() for i in store.shard_indices(s))]
    need_grid = rank == 0 and args.grid and not grid_is_current(grid_path, grid_indices(store.n, args.grid))
    if not pending and not need_grid:
        return {}
    timings, start = {}, time.perf_counter()
    model = loader() if loader else load_model(spec, device=device, dtype=args.dtype)
    sampler = Sampler(model, seed=args.seed, compile=args.compile)
    timings["load_s"] = time.perf_counter() - start
    saver = report.PngWriter(png_folder) if args.save_images else None
    pipeline = FeaturePipeline(sampler, protocol.to_metric_images, extractors, saver)
    start = time.perf_counter()
    total = sum(len(store.shard_indices(s)) for s in pending)
    with tqdm(total=total, unit="img", desc=spec.name, disable=total == 0, file=sys.stderr) as bar:
        work = [(shard, [protocol.captions[j] for j in indices], indices)
                for shard in pending for indices in [store.shard_indices(shard)]]
        for shard, arrays in pipeline.run_shards(work, args.batch_size, bar.update):
            if saver:  # a shard on disk promises its PNGs: a run killed now resumes with both
                saver.wait(store.shard_indices(shard))
            if shard in missing_features:  # a complete shard is kept as it is, even when its PNGs were remade
                store.write_features(shard, arrays)
    pipeline.close()
    timings["generate_and_features_s"] = time.perf_counter() - start
    timings["samples"] = total
    if saver:
        saver.close()
    if need_grid:
        indices = grid_indices(store.n, args.grid)
        images, _ = sampler([protocol.captions[j] for j in indices], indices)
        atomic_write_bytes(grid_path, lambda f: np.savez(f, images=images, indices=np.array(indices)))
    return timings


def evaluate(store: SampleStore, reference: dict, text_features: np.ndarray, args, device: str = "cpu") -> dict:
    """Metrics from the store alone: FID, KID, precision/recall and CLIP score on the finite samples."""
    from bench.metrics.clipscore import clip_scores
    from bench.metrics.fid import fid_from_features
    from bench.metrics.kid import kid_from_features
    from bench.metrics.prdc import precision_recall

    data = store.gather()
    finite = data["finite"].astype(bool)
    nonfinite = int((~finite).sum())
    if nonfinite > args.max_nonfinite * len(finite):
        raise UserError(f"{store.root}: {nonfinite} of {len(finite)} samples decoded to NaN/inf (limit "
                        f"--max-nonfinite {args.max_nonfinite}): check the model's dtype (try --dtype float32)")
    if finite.sum() <= PR_K:
        raise UserError(f"{store.root}: {int(finite.sum())} finite samples, but precision/recall with k = {PR_K} "
                        f"needs more than {PR_K} (and FID at least 2): raise --n")
    gen = {role: data[key][finite] for key in data if key.startswith("features_") for role in [key[9:]]}
    pr_role = "pr" if "pr" in gen else "fid"
    precision, recall = precision_recall(reference[pr_role], gen[pr_role], k=PR_K, device=device)
    kid_mean, kid_std = kid_from_features(reference["fid"], gen["fid"], seed=0)
    scores = clip_scores(gen["clip"], text_features[data["indices"][finite]])
    fid = fid_from_features(reference["fid"], gen["fid"])
    atomic_write_bytes(store.root / "clip_scores.npy", lambda f: np.save(f, scores))
    return {
        "n_samples": int(finite.sum()),
        "fid": fid,
        "precision": float(precision),
        "recall": float(recall),
        "clip_score": float(scores.mean()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "nonfinite_samples": nonfinite,
        "pr_features": args.pr_features if pr_role == "pr" else "fid",
    }


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from bench.load import hide_library_progress_bars

    hide_library_progress_bars()
    with exit_on_user_error("bench.run"):
        run(args)


def start(args):
    """Validate the options, then (accelerate state, device, suite) for this process."""
    import torch
    from accelerate import PartialState

    check_args(args)
    # Set once for the process: feature threads must not race on these global flags.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = pick_device(args.device)
    # Under torchrun / accelerate launch, CPU processes form one (gloo) group only when accelerate is told they
    # run on the CPU; otherwise each would believe it is alone and make every shard itself.
    # Ranks meet once after generation: one rank may still have a shard per model left (3 SD 2.1 cfg rows on an
    # H100: ~8 min; a resume can leave one rank far more), past NCCL's default 10-minute barrier timeout.
    state = PartialState(cpu=device == "cpu", timeout=BARRIER_TIMEOUT)
    if device == "cuda" and state.num_processes > 1:
        device = str(state.device)
    suite = setup_suite(args)
    if args.batch_size is None:
        args.batch_size = 100 if args.suite == "demo" else 16  # the demo's 8x8 models: per-call overhead dominates
    return state, device, suite


class ModelRun(NamedTuple):
    """One model of a run. ``loader`` (None: ``load_model(spec)``) builds it, e.g. a merge made in memory;
    ``provenance`` joins its store's fingerprint; ``weights()`` identifies its weights, checked against the store
    so that retrained weights at the same path are never mixed with (or reported as) the old samples."""

    spec: ModelSpec
    loader: Callable | None
    provenance: dict
    weights: Callable[[], dict]


def run_models(args, suite, models: list[ModelRun], state, device: str):
    """Generate (resumably, sharded over processes) and evaluate ``models``.

    Returns (results, stores, timings, extractor ids) on the main process, else None.
    """
    from bench import features

    names = [model.spec.name for model in models]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"model name(s) {', '.join(repeated)} given more than once: each model needs its own name "
                        "(NAME=PATH), since its samples are stored under it")
    rank, world = state.process_index, state.num_processes
    protocol, out = suite.protocol, suite.out
    shard_size = args.shard_size or (200 if args.suite == "demo" else 1000)
    extractors = make_extractors(suite.extractors, device)
    extractor_ids = {role: e.id for role, e in extractors.items()}
    stores = {
        spec.name: SampleStore(out / spec.name, len(protocol.captions), shard_size, {
            "model": spec.to_dict(), "provenance": provenance, "protocol": protocol.hash(), "seed": args.seed,
            "extractors": extractor_ids, "dtype": args.dtype})
        for spec, _, provenance, _ in models
    }
    timings = {}
    if rank == 0:
        for model in models:  # --metrics-only needs no weights, so it checks none
            stores[model.spec.name].claim(None if args.metrics_only else model.weights())
    state.wait_for_everyone()
    if not args.metrics_only:
        for spec, loader, _, _ in models:
            timings[spec.name] = generate(spec, protocol, stores[spec.name], extractors, args, device, rank, world,
                                          loader)
    state.wait_for_everyone()
    if rank != 0:
        return None

    begin = time.perf_counter()
    cache = Path(args.cache_dir)
    reference = {role: features.reference_features(protocol.reference, e, cache) for role, e in extractors.items()
                 if role != "clip"}
    texts = [protocol.clip_prefix + c for c in protocol.captions]
    text_features = features.text_features_cached(texts, extractors["clip"], cache)
    timings["reference_and_text_features_s"] = time.perf_counter() - begin
    results = {}
    for spec, _, provenance, _ in models:
        begin = time.perf_counter()
        metrics = evaluate(stores[spec.name], reference, text_features, args, device)
        metrics["metrics_s"] = time.perf_counter() - begin
        results[spec.name] = metrics
        atomic_write_text(out / spec.name / "metrics.json", json.dumps(
            {"model": spec.to_dict(), "provenance": provenance, "protocol": protocol.name, "metrics": metrics},
            indent=1))
    return results, stores, timings, extractor_ids


def run(args) -> None:
    state, device, suite = start(args)
    names = [m.strip() for m in (args.models.split(",") if args.models else suite.defaults) if m.strip()]
    if not names:
        raise UserError("--models is empty: name at least one model")
    specs = [resolve(name, suite.registry) for name in names]
    from bench.load import weights_identity

    models = [ModelRun(spec, None, {}, partial(weights_identity, spec, args.cache_dir)) for spec in specs]
    done = run_models(args, suite, models, state, device)
    if done is not None:  # the main process
        results, stores, timings, extractor_ids = done
        manifest = report.manifest(args, suite.protocol, specs, stores, extractor_ids, timings, device,
                                   state.num_processes)
        report.write_all(suite.out, suite.report, suite.protocol, specs, results, stores, manifest,
                         suite=args.suite, notes=suite.notes)
        print(report.table(specs, results).to_string(index=False))
    if not args.models:  # the suite's default run also makes its weight-interpolation sweeps (demo: Figure 3)
        run_suite_sweeps(args, suite, state, device)


def run_suite_sweeps(args, suite, state, device: str) -> None:
    """Each of ``suite.sweeps`` (a, b, lams, name) through ``bench.sweep_lambda``, beside the suite's run and report:
    ``<out>/<name>/`` and ``<report stem>-<name>.md``."""
    from bench.sweep_lambda import run_sweep

    for entry in getattr(suite, "sweeps", None) or []:
        where = SimpleNamespace(**{**vars(suite), "out": suite.out / entry.name,
                                   "report": suite.report.with_name(f"{suite.report.stem}-{entry.name}.md")})
        sweep_args = argparse.Namespace(**{**vars(args), "a": entry.a, "b": entry.b, "lams": entry.lams})
        if state.is_main_process:
            print(f"weight interpolation {entry.a} <-> {entry.b} ({entry.lams}) -> {where.report}", file=sys.stderr)
        run_sweep(sweep_args, where, state, device)


if __name__ == "__main__":
    main()
