"""The demo world's models as ``ModelSpec`` entries (SwiftBrush v2's Table 1 in miniature).

| name | what | stands in for |
|---|---|---|
| demo-teacher-cfg1 / -cfg2 / -cfg4.5 | the teacher, DDIM 25 steps, guidance 1 / 2 / 4.5 | SD 2.1, 25 steps |
| demo-onestep-init | the teacher used in one step at t = 999 | a student at its initialisation |
| demo-turbo | the regression student, one step | SD Turbo |

Folders follow ``bench.demo.world.world_paths(root)``; ``bench.demo.world.ensure_world(root)`` trains them.
"""

from pathlib import Path

from bench.registry import ModelSpec


def demo_models(root: str | Path = "results/demo") -> dict[str, ModelSpec]:
    from bench.demo.world import world_paths

    paths = world_paths(root)
    teacher, turbo = str(paths.teacher), str(paths.turbo)
    hint = (f"train the demo world first: "
            f"python -c \"from bench.demo.world import ensure_world; ensure_world('{root}')\"")

    def teacher_at(cfg: float) -> ModelSpec:
        return ModelSpec(f"demo-teacher-cfg{cfg:g}", teacher, kind="multi-step", steps=25, guidance_scale=cfg,
                         scheduler="DDIMScheduler", dtype="float32", hint=hint)

    specs = [
        teacher_at(1.0),
        teacher_at(2.0),
        teacher_at(4.5),
        ModelSpec("demo-onestep-init", teacher, kind="one-step", dtype="float32", hint=hint),
        ModelSpec("demo-turbo", turbo, kind="one-step", dtype="float32", hint=hint),
    ]
    return {spec.name: spec for spec in specs}
