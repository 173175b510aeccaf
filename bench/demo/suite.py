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
- FID here is on 128-d classifier features and biased by sample count: compare rows only at equal N.
"""


def setup_demo(args) -> SimpleNamespace:
    import bench.demo  # noqa: F401  (registers the demo extractors)
    from bench.demo.models import demo_models
    from bench.demo.protocol import demo_protocol
    from bench.demo.world import ensure_world

    variant = "demo-quick" if args.quick else "demo"
    world = ensure_world(Path("results") / variant / "world", quick=args.quick)
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
    return SimpleNamespace(protocol=protocol, registry=registry, defaults=defaults, extractors=extractors,
                           out=Path(args.out or Path("results") / variant),
                           report=Path(args.report or Path("reports") / f"{variant}.md"), notes=NOTES)


def students(root: Path) -> dict:
    """Students trained by ``distill`` in this world (none until that step has run)."""
    return {}
