"""Running models on a suite: generation (sharded over processes, resumable), evaluation, the report.

``bench.run`` and ``bench.sweep_lambda`` are thin command lines over this module. Under ``accelerate launch``
shard s of every model belongs to rank s % world; the ranks meet once after generation and the main process alone
computes the metrics from all shards and writes the outputs.
"""

import json
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench import report, tf32
from bench.errors import UserError
from bench.registry import ModelSpec, resolve
from bench.store import SampleStore, atomic_write_bytes, atomic_write_text
from bench.suites import PR_K, RunConfig, Suite

# Ranks meet once after generation: one rank may still have a shard per model left (3 SD 2.1 cfg rows on an
# H100: ~8 min; a resume can leave one rank far more), past NCCL's default 10-minute barrier timeout.
BARRIER_TIMEOUT = timedelta(hours=12)


class ModelRun(NamedTuple):
    """One model of a run. ``loader`` (None: ``load_model(spec)``) builds it, e.g. a merge made in memory;
    ``provenance`` joins its store's fingerprint; ``weights()`` identifies its weights, checked against the store
    so that retrained weights at the same path are never mixed with (or reported as) the old samples."""

    spec: ModelSpec
    loader: Callable | None
    provenance: dict
    weights: Callable[[], dict]


class Done(NamedTuple):
    """What ``run_models`` returns on the main process."""

    results: dict  # model name -> metrics
    stores: dict  # model name -> SampleStore
    timings: dict
    extractor_ids: dict  # metric role -> extractor id


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: the bench runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return name


def start(config: RunConfig):
    """(accelerate state, device) of this process."""
    from accelerate import PartialState

    tf32.set_default(False)  # once, before any feature thread starts
    device = pick_device(config.device)
    # Under torchrun / accelerate launch, CPU processes form one (gloo) group only when accelerate is told they
    # run on the CPU; otherwise each would believe it is alone and make every shard itself.
    state = PartialState(cpu=device == "cpu", timeout=BARRIER_TIMEOUT)
    if device == "cuda" and state.num_processes > 1:
        device = str(state.device)
    return state, device


def make_extractors(extractor_options: dict, device: str) -> dict:
    from bench.features import build_extractor

    return {role: build_extractor(name, device=device, **{k: v for k, v in options.items() if v is not None})
            for role, (name, options) in extractor_options.items()}


def grid_indices(n: int, count: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist())) if count else []


def grid_is_current(path: Path, indices: list[int]) -> bool:
    try:
        with np.load(path, allow_pickle=False) as grid:
            return grid["indices"].tolist() == list(indices)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return False


def generate(model: ModelRun, protocol, store: SampleStore, extractors: dict, config: RunConfig, device: str,
             rank: int, world: int) -> dict:
    """Make this process's missing shards (and the grid on the main process); returns timings."""
    from tqdm import tqdm

    from bench.generate import FeaturePipeline, Sampler
    from bench.load import load_model

    grid_path, png_folder = store.root / "grid.npz", store.root / "images"
    missing_features = store.pending(rank, world)
    pending = missing_features
    if config.save_images:  # a shard made without --save-images, or killed before its PNGs, is made again
        pending = [s for s in range(rank, store.num_shards, world) if s in missing_features or any(
            not (png_folder / f"{i:08d}.png").exists() for i in store.shard_indices(s))]
    need_grid = rank == 0 and config.grid and not grid_is_current(grid_path, grid_indices(store.n, config.grid))
    if not pending and not need_grid:
        return {}
    timings, begin = {}, time.perf_counter()
    loaded = model.loader() if model.loader else load_model(model.spec, device=device, dtype=config.dtype)
    sampler = Sampler(loaded, seed=config.seed, compile=config.compile)
    timings["load_s"] = time.perf_counter() - begin
    saver = report.PngWriter(png_folder) if config.save_images else None
    pipeline = FeaturePipeline(sampler, protocol.to_metric_images, extractors, saver)
    begin = time.perf_counter()
    total = sum(len(store.shard_indices(s)) for s in pending)
    with tqdm(total=total, unit="img", desc=model.spec.name, disable=total == 0, file=sys.stderr) as bar:
        work = [(shard, [protocol.captions[j] for j in indices], indices)
                for shard in pending for indices in [store.shard_indices(shard)]]
        for shard, arrays in pipeline.run_shards(work, config.batch_size, bar.update):
            if saver:  # a shard on disk promises its PNGs: a run killed now resumes with both
                saver.wait(store.shard_indices(shard))
            if shard in missing_features:  # a complete shard is kept as it is, even when its PNGs were remade
                store.write_features(shard, arrays)
    pipeline.close()
    timings["generate_and_features_s"] = time.perf_counter() - begin
    timings["samples"] = total
    if saver:
        saver.close()
    if need_grid:
        indices = grid_indices(store.n, config.grid)
        images, _ = sampler([protocol.captions[j] for j in indices], indices)
        atomic_write_bytes(grid_path, lambda f: np.savez(f, images=images, indices=np.array(indices)))
    return timings


def evaluate(store: SampleStore, reference: dict, text_features: np.ndarray, config: RunConfig,
             device: str = "cpu") -> dict:
    """Metrics from the store alone: FID, KID, precision/recall and CLIP score on the finite samples."""
    from bench.metrics.clipscore import clip_scores
    from bench.metrics.fid import fid_from_features
    from bench.metrics.kid import kid_from_features
    from bench.metrics.prdc import precision_recall

    data = store.gather()
    finite = data["finite"].astype(bool)
    nonfinite = int((~finite).sum())
    if nonfinite > config.max_nonfinite * len(finite):
        raise UserError(f"{store.root}: {nonfinite} of {len(finite)} samples decoded to NaN/inf (limit "
                        f"--max-nonfinite {config.max_nonfinite}): check the model's dtype (try --dtype float32)")
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
        "pr_features": config.pr_features if pr_role == "pr" else "fid",
    }


def run_models(config: RunConfig, suite: Suite, models: list[ModelRun], state, device: str) -> Done | None:
    """Generate (resumably, sharded over processes) and evaluate ``models``; ``Done`` on the main process."""
    from bench import features

    names = [model.spec.name for model in models]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"model name(s) {', '.join(repeated)} given more than once: each model needs its own name "
                        "(NAME=PATH), since its samples are stored under it")
    rank, world = state.process_index, state.num_processes
    protocol, out = suite.protocol, Path(config.out)
    extractors = make_extractors(suite.extractors, device)
    extractor_ids = {role: e.id for role, e in extractors.items()}
    stores = {
        model.spec.name: SampleStore(out / model.spec.name, len(protocol.captions), config.shard_size, {
            "model": model.spec.to_dict(), "provenance": model.provenance, "protocol": protocol.hash(),
            "seed": config.seed, "extractors": extractor_ids, "dtype": config.dtype})
        for model in models
    }
    timings = {}
    if rank == 0:
        for model in models:  # --metrics-only needs no weights, so it checks none
            stores[model.spec.name].claim(None if config.metrics_only else model.weights())
    state.wait_for_everyone()
    if not config.metrics_only:
        for model in models:
            timings[model.spec.name] = generate(model, protocol, stores[model.spec.name], extractors, config, device,
                                                rank, world)
    state.wait_for_everyone()
    if rank != 0:
        return None

    begin = time.perf_counter()
    cache = Path(config.cache_dir)
    reference = {role: features.reference_features(protocol.reference, e, cache) for role, e in extractors.items()
                 if role != "clip"}
    texts = [protocol.clip_prefix + c for c in protocol.captions]
    text_features = features.text_features_cached(texts, extractors["clip"], cache)
    timings["reference_and_text_features_s"] = time.perf_counter() - begin
    results = {}
    for model in models:
        begin = time.perf_counter()
        metrics = evaluate(stores[model.spec.name], reference, text_features, config, device)
        metrics["metrics_s"] = time.perf_counter() - begin
        results[model.spec.name] = metrics
        atomic_write_text(out / model.spec.name / "metrics.json", json.dumps(
            {"model": model.spec.to_dict(), "provenance": model.provenance, "protocol": protocol.name,
             "metrics": metrics}, indent=1))
    return Done(results, stores, timings, extractor_ids)


def run_table(config: RunConfig, suite: Suite, state, device: str) -> Done | None:
    """The suite's table: ``config.models`` (or the suite's defaults) generated, evaluated and reported."""
    from bench.load import weights_identity

    names = [m.strip() for m in (config.models.split(",") if config.models else suite.default_models) if m.strip()]
    if not names:
        raise UserError("--models is empty: name at least one model")
    specs = [resolve(name, suite.registry) for name in names]
    models = [ModelRun(spec, None, {}, partial(weights_identity, spec, config.cache_dir)) for spec in specs]
    done = run_models(config, suite, models, state, device)
    if done is not None:
        manifest = report.manifest(config, suite.protocol, specs, done.stores, done.extractor_ids, done.timings,
                                   device, state.num_processes)
        report.write_all(Path(config.out), Path(config.report), suite, specs, done.results, done.stores, manifest)
        print(report.table(specs, done.results).to_string(index=False))
    return done
