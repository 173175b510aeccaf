"""Running models on a suite: checks, generation (sharded over processes, resumable), evaluation, the report.

``bench.run`` and ``bench.sweep_lambda`` are thin command lines over this module. The order never wastes GPU
hours: every model is loaded (and released) and the reference features are computed or found in the cache before
the first sample; only then are the run folder's stores claimed. Under ``accelerate launch`` shard s of every
model belongs to rank s % world; the ranks meet once after generation and the main process alone computes the
metrics and writes the outputs. A run folder keeps every model evaluated into it: models of earlier runs with the
same run-level settings are evaluated again beside this run's, never dropped from the table.
"""

import gc
import json
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench import report, tf32
from bench.card import protocol_warnings
from bench.errors import UserError
from bench.registry import ModelSpec, resolve
from bench.store import SampleStore, atomic_write_bytes, atomic_write_text, read_store, remove_stale_temporaries
from bench.suites import RunConfig, Suite

# Ranks meet once after generation: one rank may still have a shard per model left (3 SD 2.1 cfg rows on an
# H100: ~8 min; a resume can leave one rank far more), past NCCL's default 10-minute barrier timeout.
BARRIER_TIMEOUT = timedelta(hours=12)
RUN_LEVEL = ("samples", "seed", "extractors", "run")  # fingerprint parts every model of a run folder shares


class ModelRun(NamedTuple):
    """One model of a run. ``loader`` (None: ``load_model(spec)``) builds it, e.g. a merge made in memory;
    ``provenance`` joins its store's fingerprint; ``weights()`` identifies its weights, checked against the store
    so that retrained weights at the same path are never mixed with (or reported as) the old samples."""

    spec: ModelSpec
    loader: Callable | None
    provenance: dict
    weights: Callable[[], dict]


class Done(NamedTuple):
    """What ``run_models`` returns on the main process: every model of the run folder, in table order."""

    specs: list  # ModelSpec of each row
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


def load(model: ModelRun, config: RunConfig, device: str):
    from bench.load import load_model

    return model.loader() if model.loader else load_model(model.spec, device=device, dtype=config.dtype)


def generation_settings(model: ModelRun, config: RunConfig, device: str) -> dict:
    """Load the model (then release it) and say how its samples are made: sampler, dtype actually used, device,
    batch size, compile. A model that fails to load stops the run here, before anything is written."""
    import torch

    from bench.generate import Sampler

    loaded = load(model, config, device)
    settings = {"sampler": Sampler(loaded, seed=config.seed).describe(),
                "dtype": str(loaded.dtype).removeprefix("torch."), "device": report.device_name(device),
                "batch_size": config.batch_size, "compile": config.compile}
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return settings


def generate(model: ModelRun, protocol, store: SampleStore, extractors: dict, config: RunConfig, device: str,
             rank: int, world: int) -> dict:
    """Make this process's missing shards (and the grid on the main process); returns timings."""
    from tqdm import tqdm

    from bench.generate import FeaturePipeline, Sampler

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
    sampler = Sampler(load(model, config, device), seed=config.seed, compile=config.compile)
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


def reference_and_text(suite: Suite, extractors: dict, cache_dir: str) -> tuple[dict, np.ndarray]:
    """The reference features of every role but CLIP, and the CLIP text features of every caption, cached."""
    from bench import features

    remove_stale_temporaries(Path(cache_dir))
    protocol = suite.protocol
    reference = {role: features.reference_features(protocol.reference, e, cache_dir) for role, e in extractors.items()
                 if role != "clip"}
    texts = [protocol.clip_prefix + c for c in protocol.captions]
    return reference, features.text_features_cached(texts, extractors["clip"], cache_dir)


def evaluate(store: SampleStore, reference: dict, text_features: np.ndarray, config: RunConfig,
             device: str = "cpu") -> tuple[dict, np.ndarray]:
    """Metrics from the store alone (FID, KID, precision/recall and CLIP score on the finite samples) and the
    per-sample CLIP scores; nothing is written, so a failing model leaves every file as it was."""
    from bench.metrics.clipscore import clip_scores
    from bench.metrics.fid import fid_from_features
    from bench.metrics.kid import kid_from_features
    from bench.metrics.prdc import precision_recall
    from bench.suites import PR_K

    data = store.gather()
    finite = data["finite"].astype(bool)
    nonfinite = int((~finite).sum())
    if nonfinite > config.max_nonfinite * len(finite) or (nonfinite and finite.sum() <= PR_K):
        raise UserError(f"{store.root}: {nonfinite} of {len(finite)} samples decoded to NaN/inf (limit "
                        f"--max-nonfinite {config.max_nonfinite}): the model's weights or dtype are at fault; try "
                        "--dtype float32, or check the weights")
    if finite.sum() <= PR_K:
        raise UserError(f"{store.root}: {int(finite.sum())} samples, but precision/recall with k = {PR_K} needs "
                        f"more than {PR_K}: raise --n")
    gen = {role: data[key][finite] for key in data if key.startswith("features_") for role in [key[9:]]}
    pr_role = "pr" if "pr" in gen else "fid"
    precision, recall = precision_recall(reference[pr_role], gen[pr_role], k=PR_K, device=device)
    kid_mean, kid_std = kid_from_features(reference["fid"], gen["fid"], seed=0)
    scores = clip_scores(gen["clip"], text_features[data["indices"][finite]])
    fid = fid_from_features(reference["fid"], gen["fid"])
    return {"n_samples": int(finite.sum()), "fid": fid, "precision": float(precision), "recall": float(recall),
            "clip_score": float(scores.mean()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "nonfinite_samples": nonfinite, "pr_features": "adm" if pr_role == "pr" else "fid"}, scores


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder for the run")


def earlier_models(out: Path, names: list[str], run_level: dict) -> list[tuple[ModelSpec, dict]]:
    """(spec, store info) of the models earlier runs evaluated into ``out`` that this run does not name, in the
    order of the table they were in; a model made with other run-level settings refuses the run."""
    order = {}
    table = out / "table.csv"
    if table.is_file():
        lines = table.read_text().splitlines()[1:]
        order = {line.split(",", 1)[0]: i for i, line in enumerate(lines)}
    found = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        info = read_store(folder)
        if info is None or folder.name in names or not (folder / "metrics.json").exists():
            continue
        fingerprint = info.get("fingerprint") or {}
        if changed := [k for k in RUN_LEVEL if fingerprint.get(k) != run_level.get(k)]:
            raise UserError(f"{out} holds {folder.name} made with other run settings ({', '.join(changed)} differ):"
                            " pass a new --out for this run, or delete that model's folder")
        found.append((ModelSpec(**fingerprint["model"]), info))
    return sorted(found, key=lambda item: order.get(item[0].name, len(order)))


def run_models(config: RunConfig, suite: Suite, models: list[ModelRun], state, device: str,
               run: dict | None = None) -> Done | None:
    """Check, generate (resumably, sharded over processes) and evaluate ``models``; ``Done`` on the main process.

    ``run`` (a sweep's two ends, say) joins the run-level settings that every model of the folder must share.
    """
    names = [model.spec.name for model in models]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"model name(s) {', '.join(repeated)} given more than once: each model needs its own name "
                        "(NAME=PATH), since its samples are stored under it")
    rank, world, main = state.process_index, state.num_processes, state.process_index == 0
    protocol, out = suite.protocol, Path(config.out)
    check_out(out)
    extractors = make_extractors(suite.extractors, device)
    extractor_ids = {role: e.id for role, e in extractors.items()}
    run_level = {"samples": protocol.samples_hash(), "seed": config.seed, "extractors": extractor_ids,
                 "run": run or {}}
    earlier = earlier_models(out, names, run_level) if main else []

    # 1. Every model loads (then is released), or the run stops before anything is written.
    generation = {}
    for model in models:
        recorded = read_store(out / model.spec.name)
        if config.metrics_only:  # no weights needed: the samples were made as their store says
            if recorded is None:
                raise UserError(f"{out / model.spec.name} holds no samples of {model.spec.name}: run without "
                                "--metrics-only first")
            generation[model.spec.name] = recorded["fingerprint"].get("generation")
        else:
            generation[model.spec.name] = generation_settings(model, config, device)
    # 2. The reference set is read and its features computed (or found in the cache) before the first sample.
    if main:
        for warning in protocol_warnings(suite, config):
            print(f"warning: {warning}", file=sys.stderr)
        reference, text_features = reference_and_text(suite, extractors, config.cache_dir)
    # 3. Only now are the stores claimed.
    stores = {model.spec.name: SampleStore(out / model.spec.name, len(protocol.captions), config.shard_size, {
        "model": model.spec.to_dict(), "provenance": model.provenance, **run_level,
        "generation": generation[model.spec.name]}) for model in models}
    if main:
        remove_stale_temporaries(out)
        for model in models:  # --metrics-only needs no weights, so it checks none
            stores[model.spec.name].claim(None if config.metrics_only else model.weights())
    state.wait_for_everyone()
    timings = {}
    if not config.metrics_only:
        for model in models:
            timings[model.spec.name] = generate(model, protocol, stores[model.spec.name], extractors, config, device,
                                                rank, world)
    state.wait_for_everyone()
    if not main:
        return None

    # 4. Metrics of every model of the run folder, from the stores alone.
    for spec, info in earlier:
        stores[spec.name] = SampleStore(out / spec.name, len(protocol.captions), config.shard_size,
                                        info["fingerprint"])
    specs = [spec for spec, _ in earlier] + [model.spec for model in models]
    provenance = {spec.name: stores[spec.name].fingerprint.get("provenance") for spec in specs}
    results, scores, small_samples = {}, {}, []
    for spec in specs:  # every model first, then the files: a failing model leaves the others' files untouched
        begin = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[spec.name], scores[spec.name] = evaluate(stores[spec.name], reference, text_features, config,
                                                             device)
        small_samples += [str(w.message) for w in caught if w.category.__name__ == "SmallSampleWarning"]
        results[spec.name]["metrics_s"] = time.perf_counter() - begin
    for spec in specs:
        atomic_write_bytes(out / spec.name / "clip_scores.npy", lambda f, s=scores[spec.name]: np.save(f, s))
        atomic_write_text(out / spec.name / "metrics.json", json.dumps(
            {"model": spec.to_dict(), "provenance": provenance[spec.name], "protocol": protocol.name,
             "metrics": results[spec.name]}, indent=1))
    if small_samples:  # once per run, not once per model
        print(f"warning: {small_samples[0]}", file=sys.stderr)
    return Done(specs, results, stores, timings, extractor_ids)


def run_table(config: RunConfig, suite: Suite, state, device: str) -> Done | None:
    """The suite's table: ``config.models`` (or the suite's defaults) generated, evaluated and reported, beside
    the models earlier runs evaluated into the same folder."""
    from bench.load import weights_identity

    names = [m.strip() for m in (config.models.split(",") if config.models else suite.default_models) if m.strip()]
    if not names:
        raise UserError("--models is empty: name at least one model")
    specs = [resolve(name, suite.registry) for name in names]
    models = [ModelRun(spec, None, {}, partial(weights_identity, spec, config.cache_dir)) for spec in specs]
    done = run_models(config, suite, models, state, device)
    if done is not None:
        manifest = report.manifest(config, suite, done.specs, done.stores, done.extractor_ids, done.timings, device,
                                   state.num_processes)
        report.write_all(Path(config.out), Path(config.report), suite, done.specs, done.results, done.stores,
                         manifest)
        print(report.table(done.specs, done.results).to_string(index=False))
    return done
