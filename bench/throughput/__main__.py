"""``python -m bench.throughput``: our engine against the naive diffusers loop, the same work on both sides.

Random weights in the SD 2.1-base architecture (``bench.sd21``; random weights cost the same FLOPs as real
ones), built on the target device, nothing downloaded. Three comparisons, each side at its best batch size, each
printed and saved (``--out``: JSON with the table) as soon as it ends, so a run killed at its limit keeps what it
measured:

1. ``generation_1step``: captions to uint8 images in host memory; the ``StableDiffusionPipeline`` (Euler
   trailing, t = 999, ``output_type="np"``) against our ``Sampler``;
2. ``end_to_end_1step``: captions to the FID, precision/recall and CLIP features of every image; the pipeline
   writing PNGs that clean-fid's folder features (``clean`` and ``legacy_tensorflow``) and an open_clip pass read
   back (what the published evaluation scripts do) against our ``FeaturePipeline`` writing feature shards;
3. ``end_to_end_25step``: the same for the 25-step cfg teacher with its PNDM sampler.

``--check-equivalence N`` then compares the plain path (eager, fp32 CLIP, sequential) with the fast one on N
images from the same seeds. Stand-in extractors (random weights, real shapes and code paths): torchvision
Inception-v3 to the 2048-d pool behind clean-fid's resizers, and open_clip ViT-g-14's image tower. ``--tiny`` runs
the same code on a CPU in seconds (tiny configs, tiny CLIP, a small conv net for Inception).
"""

import argparse
import copy
import faulthandler
import importlib.metadata
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.generate import Sampler
from bench.sd21 import SCHEDULER
from bench.throughput.models import (
    RandomInception,
    build_clip,
    build_generator,
    count_flops,
    feature_flops,
    generation_flops,
    loaded,
    teacher_scheduler,
)
from bench.throughput.report import PEAK_TFLOPS, save, table
from bench.throughput.stages import (
    best_batch,
    check_equivalence,
    naive_end_to_end,
    naive_generation,
    ours_end_to_end,
    ours_generation,
)

GPU_RECORD = "reports/throughput.json"  # committed: measured on a GPU, written only by full-size runs
TINY_RECORD = "results/throughput-tiny.json"
COMPARISONS = {"generation_1step": "generation, one step", "end_to_end_1step": "end to end, one step",
               "end_to_end_25step": "end to end, {steps}-step cfg {cfg:g}"}
PACKAGES = ("diffusers", "transformers", "open_clip_torch", "clean-fid", "torchvision", "numpy", "pillow")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def batches(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in text.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny configs: the same code on a CPU in seconds")
    p.add_argument("--naive-batches", type=batches, help="the naive pipeline's batch candidates (default 8,16,32,64 "
                   "on a GPU; 4,8 on a CPU)")
    p.add_argument("--ours-batches", type=batches, help="our engine's batch candidates, tried eagerly; the fastest "
                   "is compiled (default 32,64,128 on a GPU; 4,8 on a CPU)")
    p.add_argument("--n-generation", type=int, help="images in the generation comparison (default 512; tiny 16)")
    p.add_argument("--n-onestep", type=int, help="images in the one-step end to end (default 1024; tiny 16)")
    p.add_argument("--n-multistep", type=int, help="images in the 25-step end to end (default 128; tiny 8)")
    p.add_argument("--naive-max-images", type=int, help="at most this many images on a naive side (its rate is "
                   "steady; default 256 on a GPU, where its PNG saves make it slow)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile our UNet and VAE decode (default: on CUDA; the warm-up holds the compile)")
    p.add_argument("--channels-last", action="store_true", help="channels_last UNet and VAE (ours only)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="cudnn.benchmark during our end-to-end runs (default: on CUDA)")
    p.add_argument("--clip-precision", choices=["fp32", "fp16", "bf16"], help="default fp16 on a GPU, fp32 on a CPU")
    p.add_argument("--workers", type=int, default=4, help="FeaturePipeline worker threads")
    p.add_argument("--shard-size", type=int, default=1024, help="SampleStore shard (rounded to the batch size)")
    p.add_argument("--png", action="store_true", help="ours also writes 512 px PNGs (PngWriter)")
    p.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                   help="after each of our end-to-end runs, time its parts one at a time (ms per image)")
    p.add_argument("--only", type=lambda text: [name for name in text.split(",") if name], default=list(COMPARISONS),
                   help=f"comparisons to run (default all: {','.join(COMPARISONS)})")
    p.add_argument("--check-equivalence", type=int, default=0, metavar="N", help="plain vs fast path on N images")
    p.add_argument("--budget-s", type=float, default=300, help="no comparison starts, and timed loops stop, after "
                   "this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help=f"JSON record (default {GPU_RECORD} on a GPU; --tiny: {TINY_RECORD})")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(COMPARISONS))
    if unknown:
        p.error(f"unknown comparison {', '.join(unknown)}: choose from {', '.join(COMPARISONS)}")
    gpu = args.device.startswith("cuda")
    args.naive_batches = args.naive_batches or ((8, 16, 32, 64) if gpu else (4, 8))
    args.ours_batches = args.ours_batches or ((32, 64, 128) if gpu else (4, 8))
    args.compile = gpu if args.compile is None else args.compile
    args.cudnn_benchmark = gpu if args.cudnn_benchmark is None else args.cudnn_benchmark
    args.clip_precision = args.clip_precision or ("fp16" if gpu else "fp32")
    args.n_generation = (16 if args.tiny else 512) if args.n_generation is None else args.n_generation
    args.n_onestep = (16 if args.tiny else 1024) if args.n_onestep is None else args.n_onestep
    args.n_multistep = (8 if args.tiny else 128) if args.n_multistep is None else args.n_multistep
    if args.naive_max_images is None and gpu:
        args.naive_max_images = 256
    args.out = args.out or (TINY_RECORD if args.tiny else GPU_RECORD)
    if args.tiny and Path(args.out).resolve() == Path(GPU_RECORD).resolve():
        p.error(f"--tiny never writes over the GPU record {GPU_RECORD}: pass another --out")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    faulthandler.dump_traceback_later(args.budget_s + 90, exit=True)  # a hung stage still ends, with a traceback
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-") as scratch:  # PNGs, shards, tokenizer
            return measure(args, Path(scratch))
    finally:
        faulthandler.cancel_dump_traceback_later()


def whole(n: int, batch: int) -> int:
    return -(-n // batch) * batch  # whole batches: a compiled graph never meets a new shape


def measure(args, scratch: Path) -> dict:
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    device = torch.device(args.device)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny models gain nothing from threads; OpenMP barriers stall on a shared CPU
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 features: TF32 off
    if args.compile:
        torch._dynamo.config.automatic_dynamic_shapes = False  # a new shape gets its own static graph
    out = Path(args.out)
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from bench.tokenizer import write_clip_tokenizer

    # 1. Models: ours (levers applied once) and the naive pipeline's own contiguous copy of UNet and VAE.
    ours = build_generator(args.tiny, device, dtype, args.seed)
    tokenizer = write_clip_tokenizer(scratch / "tokenizer")
    naive = {**ours, "unet": copy.deepcopy(ours["unet"]), "vae": copy.deepcopy(ours["vae"])}
    feature_batch = max(args.ours_batches)
    extractors = {"fid": RandomInception(args.tiny, device, feature_batch, mode="clean"),
                  "pr": RandomInception(args.tiny, device, feature_batch, mode="adm"),
                  "clip": build_clip(args.tiny, device, args.clip_precision, feature_batch)}
    flops = count_flops(ours, tokenizer, extractors["fid"], extractors["clip"])
    if args.channels_last:
        for module in (ours["unet"], ours["vae"]):
            module.to(memory_format=torch.channels_last)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "versions": {name: _version(name) for name in PACKAGES}, "settings": vars(args), "dtype": str(dtype),
            "compile": "compiled" if args.compile else "eager", "clip": extractors["clip"].id,
            "clip_precision": args.clip_precision, "inception": extractors["fid"].id, "flops_per_image": flops,
            "peak_tflops": PEAK_TFLOPS, "setup_s": time.perf_counter() - t0, "errors": {}}
    print(f"{meta['device']}, torch {torch.__version__}, {dtype}; setup {meta['setup_s']:.1f} s; GFLOP per image: "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()), flush=True)
    pipe = StableDiffusionPipeline(vae=naive["vae"], text_encoder=naive["text_encoder"], tokenizer=tokenizer,
                                   unet=naive["unet"], scheduler=EulerDiscreteScheduler.from_config(SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    onestep = loaded(ours, tokenizer, device, dtype, 1, 0.0)
    fast = Sampler(onestep, seed=args.seed, compile=args.compile)  # one compiled sampler for every one-step run
    best = {"naive": args.naive_batches[-1], "ours": args.ours_batches[-1]}
    comparisons, equivalence, errors = {}, None, meta["errors"]

    def side(name: str, which: str) -> dict:
        """One side of one comparison, timed."""
        steps, cfg = (args.steps, args.cfg) if name.endswith("25step") else (1, 0.0)
        n = {"generation_1step": args.n_generation, "end_to_end_1step": args.n_onestep}.get(name, args.n_multistep)
        if which == "naive":
            n = min(n, args.naive_max_images or n)
            pipe.scheduler = (teacher_scheduler() if steps > 1 else
                              EulerDiscreteScheduler.from_config(SCHEDULER, timestep_spacing="trailing"))
            if name == "generation_1step":
                make = naive_generation(pipe, steps, cfg)
                row = best_batch(make, make, args.naive_batches, n, device, deadline)
                best["naive"] = row["batch"]
                return row
            return naive_end_to_end(pipe, whole(n, best["naive"]), best["naive"], steps, cfg, scratch / name,
                                    extractors, device, deadline)
        if name == "generation_1step":
            row = best_batch(ours_generation(Sampler(onestep, seed=args.seed)), ours_generation(fast),
                             args.ours_batches, whole(n, max(args.ours_batches)), device, deadline)
            best["ours"] = row["batch"]
            return row
        sampler = fast if steps == 1 else Sampler(loaded(ours, tokenizer, device, dtype, steps, cfg), seed=args.seed,
                                                  compile=args.compile)
        return ours_end_to_end(sampler, extractors, args, whole(n, best["ours"]), best["ours"], scratch / name,
                               deadline)

    # 2-4. The comparisons, in order; each side starts only inside the budget, one failure loses no other number.
    print(table({}, meta).splitlines()[0], flush=True)
    for name in args.only:
        steps, features = (args.steps if name.endswith("25step") else 1), name.startswith("end_to_end")
        row = {"label": COMPARISONS[name].format(steps=args.steps, cfg=args.cfg),
               "flops_per_image": generation_flops(flops, steps, args.cfg if steps > 1 else 0.0)
               + (feature_flops(flops) if features else 0)}
        for which in ("naive", "ours"):
            if time.perf_counter() > deadline:
                row["error"] = "skipped: past --budget-s"
                continue
            try:
                row[which] = side(name, which)
            except Exception as error:
                traceback.print_exc()
                row["error"] = errors[f"{name}/{which}"] = f"{type(error).__name__}: {error}"[:500]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if "naive" in row and "ours" in row:
            row.update(naive_img_s=row["naive"]["img_s"], ours_img_s=row["ours"]["img_s"],
                       ratio=row["ours"]["img_s"] / row["naive"]["img_s"], naive_batch=row["naive"]["batch"],
                       ours_batch=row["ours"]["batch"])
        comparisons[name] = row
        print("\n".join(table({name: row}, meta).splitlines()[1:-1]), flush=True)
        save(out, meta, comparisons, equivalence)

    # 5. Equivalence: the levers must not move the metrics.
    if args.check_equivalence and time.perf_counter() < deadline:
        args.batch_size = best["ours"]
        try:
            equivalence = check_equivalence(loaded(naive, tokenizer, device, dtype, 1, 0.0), fast, extractors["fid"],
                                            extractors["clip"], args, whole(args.check_equivalence, best["ours"]))
            print("equivalence (plain vs fast, one-step): " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in equivalence.items()), flush=True)
        except Exception as error:
            traceback.print_exc()
            errors["equivalence"] = f"{type(error).__name__}: {error}"[:500]
    meta["total_s"] = time.perf_counter() - t0
    save(out, meta, comparisons, equivalence)
    print(f"\n{table(comparisons, meta)}\nerrors: {errors or 'none'}; total {meta['total_s']:.1f} s; written {out}",
          flush=True)
    return {"meta": meta, "comparisons": comparisons, "equivalence": equivalence}


if __name__ == "__main__":
    main()
