"""``python -m bench.run --suite demo``: the demo world plugged into the same registry, engine, store
and metrics as COCO. Trains what is missing (cached under ``results/demo/world``), then evaluates."""

from pathlib import Path
from types import SimpleNamespace

from bench.registry import MODELS

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
SWEEPS = (("demo-vsd-full", "demo-vsd-lora-clip", "0:1:0.25"), ("demo-turbo", "demo-vsd-lora-clip", "0:1:0.25"))


def setup_demo(args) -> SimpleNamespace:
    import torch

    import bench.demo  # noqa: F401  (registers the demo extractors)
    from bench.demo.models import demo_models
    from bench.demo.protocol import demo_protocol
    from bench.demo.students import ensure_students, student_paths
    from bench.demo.world import ensure_world

    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        # The demo's models are tiny: on a CPU the whole run (training and evaluation) uses one torch thread.
        # Two threads on a shared 2-core machine measured 5x slower generation and 8-60x slower training.
        torch.set_num_threads(1)
    variant = "demo-quick" if args.quick else "demo"
    world = _one_thread(ensure_world, Path("results") / variant / "world", quick=args.quick)
    _one_thread(ensure_students, world.root, quick=args.quick)  # its trainings: subprocesses on one thread each
    n = args.n or (600 if args.quick else 1800)
    protocol = demo_protocol(samples_per_prompt=-(-n // 10))
    if len(protocol.captions) != n:
        from bench.errors import UserError

        raise UserError(f"--n {n}: the demo protocol makes 10 prompts with equal counts; pass a multiple of 10")
    registry = dict(MODELS) | demo_models(world.root) | students(world.root)
    extractors = {
        "fid": ("demo-classifier", {"weights": str(world.classifier)}),
        "clip": ("demo-contrastive", {"weights": str(world.contrastive)}),
    }
    defaults = [name for name in registry if name.startswith("demo-")]
    report = Path(args.report or Path("reports") / f"{variant}.md")
    sweeps = [SimpleNamespace(a=a, b=b, lams=lams, name=f"sweep-{a}-{b}") for a, b, lams in SWEEPS]
    links = "\n".join(f"- Weight interpolation {s.a} ↔ {s.b} (w = weight of B, {s.lams}): "
                      f"[{report.stem}-{s.name}.md]({report.stem}-{s.name}.md)" for s in sweeps)
    notes = NOTES.format(students=student_paths(world.root).root) + links + "\n"
    return SimpleNamespace(protocol=protocol, registry=registry, defaults=defaults, extractors=extractors,
                           out=Path(args.out or Path("results") / variant), report=report, notes=notes,
                           sweeps=sweeps)


def _one_thread(train, *args, **kwargs):
    """Run a training stage with one torch thread: the demo's models are tiny (the prototype timed everything on
    one thread), and two threads on a 2-core machine are 8-60x slower as soon as anything else runs (measured:
    the world's classifier took 294 s instead of ~5 s beside one other busy process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def students(root: Path) -> dict:
    """The students ``distill`` trains in this world (``bench.demo.students``), as one-step ModelSpecs."""
    from bench.demo.students import student_models

    return student_models(root)
