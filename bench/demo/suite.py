"""``--suite demo``: the demo world plugged into the same registry, engine, store and metrics as COCO.

Trains what is missing (cached under ``results/demo/world``), then evaluates; the default run adds the two
weight-interpolation sweeps of ``SWEEPS``.
"""

import os
from pathlib import Path

from bench.errors import UserError
from bench.registry import MODELS
from bench.scores import PR_K
from bench.suites import Suite, SweepSpec

NOTES = """How to read the demo rows:
- `demo-teacher-cfg*`: the teacher, DDIM 25 steps. As in the paper's SD 2.1 rows, raising the guidance trades
  recall (diversity) for alignment (the CLIP-score stand-in); in 8x8 pixel space cfg 4.5 saturates, and cfg 2
  plays the role the paper's 4.5 plays.
- `demo-onestep-init`: the teacher run once at t = 999 on pure noise, x0 read from its epsilon: the blurry
  class means a VSD student starts from (SwiftBrush v1 initialises from the teacher).
- `demo-turbo`: a one-step student trained by regression onto the teacher's DDIM-25 cfg-2 samples from the
  same noise (DMD's regression loss); it stands in for SD Turbo, the initialisation SwiftBrush v2 uses.
- `demo-vsd-full` (model A): VSD (DMD2's two-timescale variant: full-copy fake teacher, 5 fake updates per
  student update, x0-space normalised gradient, real cfg 2), all UNet weights, from `demo-onestep-init`.
- `demo-vsd-lora-clip` (model B): the same VSD with a LoRA student plus the clamped CLIP loss on a separate
  contrastive model (`demo-contrastive-loss`; tau at the 25th percentile of the init's cosines), from
  `demo-turbo`, as SwiftBrush v2 starts from SD Turbo. `demo-merged`: 0.5 A + 0.5 B (`distill.merge`).
  Training settings, tau and timings: `bench_demo.json` in each folder under `{students}`.
- FID here is on 128-d classifier features and biased by sample count: compare rows only at equal N.
"""


# The weight-interpolation sweeps (Figure 3) the default demo run adds: (A at w = 0, B at w = 1, grid of w).
SWEEPS = (SweepSpec("demo-vsd-full", "demo-vsd-lora-clip", "0:1:0.25"),
          SweepSpec("demo-turbo", "demo-vsd-lora-clip", "0:1:0.25"))


def demo_suite(config) -> Suite:
    """The ``--suite demo`` setup: trains what is missing (one torch thread on a CPU), then the suite."""
    import torch

    import bench.demo  # noqa: F401  (registers the demo extractors)
    from bench.demo.models import demo_models
    from bench.demo.protocol import demo_protocol
    from bench.demo.students import ensure_students, student_models, student_paths
    from bench.demo.world import ensure_world, world_paths

    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        torch.set_num_threads(1)  # the demo's models are tiny: threads only add contention (docs/demo.md)
    variant = "demo-quick" if config.quick else "demo"
    root = Path("results") / variant / "world"
    # Under a launcher (--processes, torchrun) rank 0 trains what is missing while the other ranks wait.
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else None
    if rank:
        torch.distributed.barrier()
    else:
        _one_thread(ensure_world, root, quick=config.quick, turbo=False)
        _one_thread(ensure_students, root, quick=config.quick)  # demo-turbo here, A and B in subprocesses
    if rank == 0:
        torch.distributed.barrier()
    world = world_paths(root)
    n = config.n or (600 if config.quick else 1800)
    protocol = demo_protocol(samples_per_prompt=-(-n // 10))
    if len(protocol.captions) != n:
        raise UserError(f"--n {n}: the demo protocol makes 10 prompts with equal counts; pass a multiple of 10")
    registry = dict(MODELS) | demo_models(world.root) | student_models(world.root)
    extractors = {
        "fid": ("demo-classifier", {"weights": str(world.classifier)}),
        "clip": ("demo-contrastive", {"weights": str(world.contrastive)}),
    }
    report = Path(config.report or Path("reports") / f"{Path(config.out or Path('results') / variant).name}.md")
    links = "\n".join(f"- Weight interpolation {s.a} ↔ {s.b} (w = weight of B, {s.lams}): "
                      f"[{report.stem}-{s.name}.md]({report.stem}-{s.name}.md)" for s in SWEEPS)
    notes = NOTES.format(students=student_paths(world.root).root) + links + "\n"
    card = {"captions": "the ten digit prompts, interleaved", "samples per model": n,
            "reference images": protocol.reference.count, "resize": f"none ({protocol.metric_resolution} px)",
            "FID features": "demo-classifier", "precision/recall features": f"demo-classifier, k = {PR_K}",
            "CLIP model": "demo-contrastive", "CLIP prefix": repr(protocol.clip_prefix)}
    return Suite(name="demo", title="Offline demo world (digits)", protocol=protocol, registry=registry,
                 default_models=tuple(name for name in registry if name.startswith("demo-")), extractors=extractors,
                 out=Path("results") / variant, batch_size=100, shard_size=100, notes=notes, sweeps=SWEEPS,
                 card=card, processes=min(2, os.cpu_count() or 1) if on_cpu else 1)


def _one_thread(train, *args, **kwargs):
    """Run a training stage with one torch thread (the demo's models are tiny; see docs/demo.md)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)
