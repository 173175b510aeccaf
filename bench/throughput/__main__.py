"""``python -m bench.throughput``: our engine against the naive diffusers loop, one run, one table.

Random weights in the SD 2.1-base architecture (``bench.sd21``; random weights cost the same FLOPs as real
ones), built on the target device, nothing downloaded. Stages, in order, each printed and saved (``--out``, JSON
with the table) as soon as it ends, so a run killed at its limit keeps what it measured:

1. naive one-step: ``StableDiffusionPipeline`` fp16, batch 16, Euler trailing (t = 999), PIL output, PNGs saved inline;
2. ours one-step: ``Sampler`` + ``FeaturePipeline`` (256 px LANCZOS, Inception + CLIP features) + ``SampleStore``;
3. naive 25-step DDIM cfg 7.5;  4. ours 25-step cfg 7.5;
5. ``--check-equivalence N``: the plain path (eager, fp32 features, sequential) against the fast one, same seeds.

Stand-in extractors (random weights, real shapes): clean-fid's ``clean`` resizer + torchvision Inception-v3 to
the 2048-d pool (fp32, TF32 off), and open_clip ViT-g-14's image tower via ``ClipExtractor.from_components``.
``--tiny`` runs the same code on a CPU in seconds (tiny configs, tiny CLIP, a small conv net for Inception).
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

from bench.sd21 import SCHEDULER
from bench.throughput.models import RandomInception, build_clip, build_generator, count_flops, loaded, work_flops
from bench.throughput.report import BUSY_TARGET, PEAK_TFLOPS, fmt, save, table
from bench.throughput.stages import check_equivalence, run_naive, run_ours

GPU_RECORD = "reports/throughput.json"  # committed: measured on a GPU, written only by full-size runs
TINY_RECORD = "results/throughput-tiny.json"
PACKAGES = ("diffusers", "transformers", "open_clip_torch", "clean-fid", "torchvision", "numpy", "pillow")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny configs: the same code on a CPU in seconds")
    p.add_argument("--batch-size", type=int, help="our engine's batch (default 64 on a GPU, 8 on a CPU)")
    p.add_argument("--naive-batch-size", type=int, default=16)
    p.add_argument("--n-onestep", type=int, help="images per one-step stage (default 768; tiny 16; 0 skips both)")
    p.add_argument("--n-multistep", type=int, help="images per 25-step stage (default 128; tiny 8; 0 skips both)")
    p.add_argument("--naive-max-images", type=int, help="at most this many images in a naive stage (its rate is "
                   "steady, and at 14 img/s with PNGs a 2,000-image naive stage would take most of a device session)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile UNet and VAE decode (warm-up batch, excluded from timing)")
    p.add_argument("--channels-last", action="store_true", help="channels_last UNet and VAE (ours only)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cudnn.benchmark during our stages")
    p.add_argument("--clip-precision", choices=["fp32", "fp16", "bf16"], help="default fp16 on a GPU, fp32 on a CPU")
    p.add_argument("--workers", type=int, default=4, help="FeaturePipeline worker threads")
    p.add_argument("--shard-size", type=int, default=1024, help="SampleStore shard (rounded to the batch size)")
    p.add_argument("--png", action="store_true", help="ours also writes 512 px PNGs (PngWriter)")
    p.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                   help="after each of our stages, time its parts one at a time (ms per image)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--check-equivalence", type=int, default=0, metavar="N", help="plain vs fast path on N images")
    p.add_argument("--budget-s", type=float, default=420, help="no stage starts, and timed loops stop, after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help=f"JSON record (default {GPU_RECORD} on a GPU; --tiny: {TINY_RECORD})")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (64 if gpu else 8)
    args.clip_precision = args.clip_precision or ("fp16" if gpu else "fp32")
    up = lambda n: -(-n // args.batch_size) * args.batch_size  # noqa: E731 - whole batches: no recompiles
    args.n_onestep = up((16 if args.tiny else 768) if args.n_onestep is None else args.n_onestep)
    args.n_multistep = up((8 if args.tiny else 128) if args.n_multistep is None else args.n_multistep)
    args.check_equivalence = up(args.check_equivalence) if args.check_equivalence else 0
    args.shard_size = up(args.shard_size)
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
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    from bench.tokenizer import write_clip_tokenizer

    # 1. Models: ours (levers applied once) and the naive loop's own contiguous copy of UNet and VAE.
    ours = build_generator(args.tiny, device, dtype, args.seed)
    tokenizer = write_clip_tokenizer(scratch / "tokenizer")
    naive = {**ours, "unet": copy.deepcopy(ours["unet"]), "vae": copy.deepcopy(ours["vae"])}
    inception = RandomInception(args.tiny, device, batch_size=args.batch_size)
    clip = build_clip(args.tiny, device, args.clip_precision, args.batch_size)
    flops = count_flops(ours, tokenizer, inception, clip)
    if args.channels_last:
        for module in (ours["unet"], ours["vae"]):
            module.to(memory_format=torch.channels_last)
    extractors = {"inception": inception, "clip": clip}
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "versions": {name: _version(name) for name in PACKAGES},
            "settings": vars(args), "dtype": str(dtype), "clip": clip.id, "clip_precision": args.clip_precision,
            "inception": inception.id, "flops_per_image": flops, "peak_tflops": PEAK_TFLOPS,
            "setup_s": time.perf_counter() - t0, "errors": {}}
    print(f"{meta['device']}, torch {torch.__version__}, {dtype}; setup {meta['setup_s']:.1f} s; GFLOP per image: "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()), flush=True)
    pipe = StableDiffusionPipeline(vae=naive["vae"], text_encoder=naive["text_encoder"], tokenizer=tokenizer,
                                   unet=naive["unet"], scheduler=EulerDiscreteScheduler.from_config(SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    results, equivalence, errors = {}, None, meta["errors"]

    def record(name, label, result, steps, cfg, features):
        result.update(label=label, flops_per_image=work_flops(flops, steps, cfg, features))
        naive_row = results.get(name.replace("ours", "naive"))
        if name.startswith("ours") and naive_row:
            result["x_naive"] = result["img_s"] / naive_row["img_s"]
            if naive_row.get("img_s_without_png"):
                result["x_naive_without_png"] = result["img_s"] / naive_row["img_s_without_png"]
        results[name] = result
        print("\n".join(table({name: result}, meta).splitlines()[1:-1]), flush=True)
        save(out, meta, results, equivalence)

    # 2-5. The four timed stages, in order; each starts only inside the budget.
    onestep, multistep = (1, 0.0), (args.steps, args.cfg)
    stages = [("naive-1step", "naive one-step (PNG inline)", onestep), ("ours-1step", "ours one-step", onestep),
              (f"naive-{args.steps}step", f"naive {args.steps}-step cfg {args.cfg:g}", multistep),
              (f"ours-{args.steps}step", f"ours {args.steps}-step cfg {args.cfg:g}", multistep)]
    print(table({}, meta).splitlines()[0], flush=True)
    for name, label, (steps, cfg) in stages:
        n = args.n_onestep if steps == 1 else args.n_multistep
        if name.startswith("naive") and args.naive_max_images is not None:
            n = min(n, args.naive_max_images)
        if n <= 0 or time.perf_counter() > deadline or (args.skip_naive and name.startswith("naive")):
            print(f"{label}: skipped", flush=True)
            continue
        folder, result = scratch / name, None
        while result is None:
            try:
                if name.startswith("naive"):
                    pipe.scheduler = (DDIMScheduler.from_config(SCHEDULER) if steps > 1 else
                                      EulerDiscreteScheduler.from_config(SCHEDULER, timestep_spacing="trailing"))
                    result = run_naive(pipe, n, args.naive_batch_size, steps, cfg, folder, deadline)
                else:
                    result = run_ours(loaded(ours, tokenizer, device, dtype, steps, cfg), extractors, args, n,
                                      folder / ("eager" if "compile" in errors else "compiled"), deadline)
            except Exception as error:  # one broken stage must not lose the others' numbers
                traceback.print_exc()
                errors[name] = f"{type(error).__name__}: {error}"[:500]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if not (args.compile and name.startswith("ours")):
                    break
                args.compile, errors["compile"] = False, f"off after {name} failed: {name} and later stages eager"
        if result is None:
            save(out, meta, results, equivalence)
            continue
        record(name, label, result, steps, cfg, not name.startswith("naive"))

    # 6. Equivalence: the levers must not move the metrics.
    if args.check_equivalence and time.perf_counter() < deadline:
        try:
            equivalence = check_equivalence(loaded(naive, tokenizer, device, dtype, 1, 0.0),
                                            loaded(ours, tokenizer, device, dtype, 1, 0.0), inception, clip, args,
                                            args.check_equivalence)
            print("equivalence (plain vs fast, one-step): " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in equivalence.items()), flush=True)
        except Exception as error:
            traceback.print_exc()
            errors["equivalence"] = f"{type(error).__name__}: {error}"[:500]
    busy = [(r["gpu_busy"], r["wall_s"]) for name, r in results.items()
            if name.startswith("ours") and r["gpu_busy"] is not None]
    meta["gpu_busy_ours"] = sum(b * w for b, w in busy) / sum(w for _, w in busy) if busy else None
    meta["total_s"] = time.perf_counter() - t0
    save(out, meta, results, equivalence)
    print(f"\n{table(results, meta)}\nGPU busy over our stages: {fmt(meta['gpu_busy_ours'], '.1%')} "
          f"(target >= {BUSY_TARGET:.0%}); errors: {errors or 'none'}; total {meta['total_s']:.1f} s; written {out}",
          flush=True)
    return {"meta": meta, "stages": results, "equivalence": equivalence}


if __name__ == "__main__":
    main()
