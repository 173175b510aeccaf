"""Running models on a suite: checks, generation (sharded over processes, resumable), evaluation, the report.

``bench.run`` and ``bench.sweep_lambda`` are thin command lines over this module. The order never wastes GPU
hours: every model is loaded (and released) and the reference features are computed or found in the cache before
the first sample; only then are the run folder's stores claimed. Under ``accelerate launch`` shard s of every
model belongs to rank s % world; the ranks meet once after generation and the main process alone computes the
metrics and writes the outputs. A run folder keeps every model evaluated into it: models of earlier runs with the
same run-level settings are evaluated again beside this run's, never dropped from the table.
"""

import dataclasses
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
from bench.store import (
    SampleStore,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    read_store,
    remove_stale_temporaries,
)
from bench.suites import RunConfig, Suite, extra_seeds

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
    within_noise: dict  # model -> metric -> the models whose interval overlaps its own
    per_sample: dict  # model -> per-sample arrays (CLIP scores, their sample indices, non-finite indices, ...)
    details: dict  # model -> what metrics.json keeps beside the metrics (interval settings, diversity subset)
    images: dict  # model -> {key: path} of the samples the HTML page shows


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


def with_device_defaults(config: RunConfig, device: str) -> RunConfig:
    """The options whose default depends on the device: ``--compile`` is on for a GPU."""
    return dataclasses.replace(config, compile=device.startswith("cuda") if config.compile is None else config.compile)


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
    # On a GPU the weights' memory goes back before the next model loads; on a CPU any cyclic garbage is left to
    # Python's own collector, since a forced full collection per model costs more than loading a small model.
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
    return settings


class Job(NamedTuple):
    """One sample store of a model: the table's samples, those of an extra noise seed, or the diversity samples."""

    kind: str  # "main", "seed" or "diversity"
    store: SampleStore
    captions: tuple  # caption of each sample index of the store
    seed: int


def generate(model: ModelRun, jobs: list[Job], protocol, extractors: dict, config: RunConfig, device: str,
             rank: int, world: int) -> dict:
    """Make this process's missing shards of every job (and the grid on the main process); returns timings."""
    from tqdm import tqdm

    from bench.generate import FeaturePipeline, Sampler
    from bench.pages import GalleryWriter, gallery_items

    main = jobs[0].store
    grid_path, png_folder = main.root / "grid.npz", main.root / "images"
    missing = [job.store.pending(rank, world) for job in jobs]  # shards without features, per job
    pending = list(missing)  # shards to generate, per job
    if config.save_images:  # a shard made without --save-images, or killed before its PNGs, is made again
        pending[0] = [s for s in range(rank, main.num_shards, world) if s in missing[0] or any(
            not (png_folder / f"{i:08d}.png").exists() for i in main.shard_indices(s))]
    need_grid = rank == 0 and config.grid and not grid_is_current(grid_path, grid_indices(main.n, config.grid))
    if not any(pending) and not need_grid:
        return {}
    timings, begin = {}, time.perf_counter()
    sampler = Sampler(load(model, config, device), seed=config.seed, compile=config.compile)
    timings["load_s"] = time.perf_counter() - begin
    begin = time.perf_counter()
    total = sum(len(job.store.shard_indices(s)) for job, shards in zip(jobs, pending) for s in shards)
    with tqdm(total=total, unit="img", desc=model.spec.name, disable=total == 0 or rank != 0,  # one bar per run
              file=sys.stderr) as bar:
        for job, shards, without_features in zip(jobs, pending, missing):
            if not shards:
                continue
            sampler.seed = job.seed
            saver = report.PngWriter(png_folder) if config.save_images and job.kind == "main" else None
            savers = [saver] if saver else []
            if job.kind == "main" and config.gallery:  # the report's gallery, kept now instead of made again
                resolution = thumbnail_resolution(protocol)
                savers.append(GalleryWriter(gallery_folder(config) / model.spec.name,
                                            gallery_items(main.n, config.gallery, job.seed),
                                            partial(thumbnail_images, protocol), resolution))
            pipeline = FeaturePipeline(sampler, protocol.to_metric_images, extractors, savers)
            work = [(shard, [job.captions[j] for j in indices], indices)
                    for shard in shards for indices in [job.store.shard_indices(shard)]]
            for shard, arrays in pipeline.run_shards(work, config.batch_size, bar.update):
                if saver:  # a shard on disk promises its PNGs: a run killed now resumes with both
                    saver.wait(job.store.shard_indices(shard))
                if shard in without_features:  # a complete shard is kept as it is, even when its PNGs were remade
                    job.store.write_features(shard, arrays)
            pipeline.close()
            if saver:
                saver.close()
    timings["generate_and_features_s"] = time.perf_counter() - begin
    timings["samples"] = total
    if need_grid:
        sampler.seed = jobs[0].seed
        indices = grid_indices(main.n, config.grid)
        images, _ = sampler([protocol.captions[j] for j in indices], indices)
        atomic_write_bytes(grid_path, lambda f: np.savez(f, images=images, indices=np.array(indices)))
    return timings


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


def model_jobs(model: ModelRun, protocol, config: RunConfig, run_level: dict, generation: dict) -> list[Job]:
    """The stores a model's samples go to: the table's, one per extra ``--seeds`` seed (``<model>/seeds/<seed>``)
    and, with ``--diversity K``, K seeds of a fixed prompt subset (``<model>/diversity``)."""
    from bench.evaluate import DIVERSITY_SEED, diversity_prompts

    root, n, shard_size = Path(config.out) / model.spec.name, len(protocol.captions), config.shard_size
    base = {"model": model.spec.to_dict(), "provenance": model.provenance, **run_level, "generation": generation}
    jobs = [Job("main", SampleStore(root, n, shard_size, base), protocol.captions, config.seed)]
    for seed in extra_seeds(config):
        jobs.append(Job("seed", SampleStore(root / "seeds" / str(seed), n, shard_size, {**base, "seed": seed}),
                        protocol.captions, seed))
    if config.diversity:
        prompts = diversity_prompts(n, config.diversity, config.diversity_prompts)
        captions = tuple(protocol.captions[p] for p in prompts for _ in range(config.diversity))
        fingerprint = {**base, "samples": protocol.samples_hash(), "seed": config.seed + DIVERSITY_SEED,
                       "provenance": {**model.provenance, "diversity": {"prompts": prompts, "k": config.diversity}}}
        jobs.append(Job("diversity", SampleStore(root / "diversity", len(captions), shard_size, fingerprint),
                        captions, config.seed + DIVERSITY_SEED))
    return jobs


def score(spec, jobs: list[Job], suite: Suite, reference: dict, texts: dict, config: RunConfig,
          device: str) -> tuple[dict, dict, dict]:
    """A model's row: its table metrics with intervals, the spread across seeds, the diversity columns."""
    from bench.evaluate import diversity_of, evaluate, seed_spread

    metrics, per_sample, details = evaluate(jobs[0].store, suite, reference, texts, config.max_nonfinite, device)
    seeds = [evaluate(job.store, suite, reference, texts, config.max_nonfinite, device)[0] for job in jobs
             if job.kind == "seed"]
    if seeds:
        metrics |= seed_spread([metrics, *seeds], suite.scorer.columns)
    for job in jobs:
        if job.kind == "diversity":
            diversity = job.store.fingerprint["provenance"]["diversity"]
            columns, per_prompt = diversity_of(job.store, diversity["prompts"], diversity["k"], config.max_nonfinite)
            metrics |= columns
            per_sample |= per_prompt
            details["diversity"] = diversity
    return metrics, per_sample, details


def run_models(config: RunConfig, suite: Suite, models: list[ModelRun], state, device: str,
               run: dict | None = None) -> Done | None:
    """Check, generate (resumably, sharded over processes) and evaluate ``models``; ``Done`` on the main process.

    ``run`` (a sweep's two ends, say) joins the run-level settings that every model of the folder must share.
    """
    from bench.evaluate import reference_and_text, within_noise

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
    jobs = {}
    for model in models:
        if config.metrics_only:  # no weights needed: the samples were made as their store says
            recorded = read_store(out / model.spec.name)
            if recorded is None:
                raise UserError(f"{out / model.spec.name} holds no samples of {model.spec.name}: run without "
                                "--metrics-only first")
            generation = recorded["fingerprint"].get("generation")
        else:
            generation = generation_settings(model, config, device)
        jobs[model.spec.name] = model_jobs(model, protocol, config, run_level, generation)
    # 2. The reference set is read and its features computed (or found in the cache) before the first sample.
    if main:
        for warning in protocol_warnings(suite, config):
            print(f"warning: {warning}", file=sys.stderr)
        reference, texts = reference_and_text(suite, extractors, config.cache_dir)
    # 3. Only now are the stores claimed.
    if main:
        remove_stale_temporaries(out)
        for model in models:  # --metrics-only needs no weights, so it checks none
            for job in jobs[model.spec.name]:
                job.store.claim(None if config.metrics_only else model.weights())
    state.wait_for_everyone()
    timings = {}
    if not config.metrics_only:
        for model in models:
            timings[model.spec.name] = generate(model, jobs[model.spec.name], protocol, extractors, config, device,
                                                rank, world)
    state.wait_for_everyone()
    if not main:
        return None

    # 4. Metrics of every model of the run folder, from the stores alone; earlier models keep their extra columns.
    for spec, info in earlier:
        store = SampleStore(out / spec.name, len(protocol.captions), config.shard_size, info["fingerprint"])
        jobs[spec.name] = [Job("main", store, protocol.captions, config.seed)]
    specs = [spec for spec, _ in earlier] + [model.spec for model in models]
    earlier_names = {spec.name for spec, _ in earlier}
    stores = {spec.name: jobs[spec.name][0].store for spec in specs}
    provenance = {spec.name: stores[spec.name].fingerprint.get("provenance") for spec in specs}
    results, per_sample, details, small_samples = {}, {}, {}, []
    for spec in specs:  # every model first, then the files: a failing model leaves the others' files untouched
        begin = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[spec.name], per_sample[spec.name], details[spec.name] = score(
                spec, jobs[spec.name], suite, reference, texts, config, device)
        small_samples += [str(w.message) for w in caught if w.category.__name__ == "SmallSampleWarning"]
        if spec.name in earlier_names:  # its seeds and diversity stay as the run that made them left them
            kept = read_json(out / spec.name / "metrics.json") or {}
            results[spec.name] = {**{k: v for k, v in kept.get("metrics", {}).items()
                                     if k == "seeds" or "_seeds_" in k or "diversity" in k}, **results[spec.name]}
            if "diversity" in kept.get("details", {}):
                details[spec.name]["diversity"] = kept["details"]["diversity"]
                per_sample[spec.name] |= {path.stem: np.load(path)
                                          for path in (out / spec.name).glob("diversity_*_per_prompt.npy")}
        results[spec.name]["metrics_s"] = time.perf_counter() - begin
    noise = within_noise(specs, results, suite.scorer.columns)
    for spec in specs:
        for name, values in per_sample[spec.name].items():  # e.g. clip_scores.npy
            atomic_write_bytes(out / spec.name / f"{name}.npy", lambda f, v=values: np.save(f, v))
        atomic_write_text(out / spec.name / "metrics.json", json.dumps(
            {"model": spec.to_dict(), "provenance": provenance[spec.name], "protocol": protocol.name,
             "metrics": results[spec.name], "within_noise_of": noise.get(spec.name, {}),
             "details": details[spec.name]}, indent=1, default=float))
    if small_samples:  # once per run, not once per model
        print(f"warning: {small_samples[0]}", file=sys.stderr)
    images = illustrate(models, specs, per_sample, details, config, suite, device)
    return Done(specs, results, stores, timings, extractor_ids, noise, per_sample, details, images)


def illustrate(models: list[ModelRun], specs, per_sample: dict, details: dict, config: RunConfig, suite: Suite,
               device: str) -> dict:
    """The thumbnails of the samples each model's page shows (``bench.pages``), made for this run's models when
    missing; an earlier run's models, and ``--metrics-only``, keep what is there."""
    from bench.evaluate import DIVERSITY_SEED
    from bench.pages import thumbnails, wanted

    folder, runs = gallery_folder(config), {model.spec.name: model for model in models}
    resolution = thumbnail_resolution(suite.protocol)
    images = {}
    for spec in specs:
        items = wanted(len(suite.protocol.captions), config.gallery, config.seed, per_sample[spec.name],
                       details[spec.name], config.seed + DIVERSITY_SEED)
        model = runs.get(spec.name) if not config.metrics_only else None
        make = partial(render, model, config, device, suite.protocol) if model else None
        images[spec.name] = thumbnails(folder / spec.name, items, make, resolution)
    return images


def gallery_folder(config: RunConfig) -> Path:
    return Path(config.report).with_suffix("") / "gallery"


def thumbnail_resolution(protocol) -> int:
    return protocol.metric_resolution or 256  # a protocol at native size gets 256 px thumbnails


def thumbnail_images(protocol, images: np.ndarray) -> np.ndarray:
    """Samples (uint8 NHWC) as the report shows them: at the metric resolution, or 256 px."""
    from bench.protocol import to_metric_images

    if protocol.metric_resolution:
        return protocol.to_metric_images(images)
    return to_metric_images(images, thumbnail_resolution(protocol))


def render(model: ModelRun, config: RunConfig, device: str, protocol, items) -> np.ndarray:
    """The images of ``items`` (``bench.pages.Item``) at the thumbnails' resolution, loading the model once."""
    from bench.generate import Sampler

    sampler, out = Sampler(load(model, config, device), seed=config.seed), [None] * len(items)
    for seed in sorted({item.seed for item in items}):
        sampler.seed = seed
        chosen = [k for k, item in enumerate(items) if item.seed == seed]
        for start in range(0, len(chosen), config.batch_size):
            part = chosen[start:start + config.batch_size]
            images, _ = sampler([protocol.captions[items[k].caption] for k in part], [items[k].index for k in part])
            for k, image in zip(part, thumbnail_images(protocol, images)):
                out[k] = image
    return np.stack(out)


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
        report.write_all(config, suite, done, manifest)
        print(report.table(done.specs, done.results, suite.scorer.columns).to_string(index=False))
    return done
