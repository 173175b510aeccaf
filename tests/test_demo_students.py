"""The demo world's distilled students (bench.demo.students) and the demo suite around them, on a tiny world:
training makes loadable folders once, the merge is exactly 0.5 A + 0.5 B, the suite lists them and its default
run adds the weight-interpolation sweeps."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.demo import students, world  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.suites import SweepSpec  # noqa: E402
from tests.test_demo import _tiny_settings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    """A tiny world (3 teacher steps, 2 of everything else) and its quick students, built once."""
    root = tmp_path_factory.mktemp("students") / "results" / "demo-quick" / "world"
    with pytest.MonkeyPatch.context() as patch:
        _tiny_settings(patch)
        world.ensure_world(root, quick=True)
        begin = time.time()
        folders = students.ensure_students(root, quick=True)
        seconds = time.time() - begin
    return root, folders, seconds


def _weights(folder):
    for sub in ("unet_ema", "."):
        path = folder / sub / "diffusion_pytorch_model.safetensors"
        if path.exists():
            return load_file(path)
    raise AssertionError(f"no UNet weights in {folder}")


def test_students_are_loadable_one_step_models(tiny):
    from bench.generate import Sampler
    from bench.load import load_model

    root, folders, seconds = tiny
    assert set(folders) == {"demo-vsd-full", "demo-vsd-lora-clip", "demo-merged"}
    assert seconds < 120, f"the quick students took {seconds:.0f} s"
    specs = students.student_models(root)
    teacher = load_file(world.world_paths(root).teacher / "unet" / "diffusion_pytorch_model.safetensors")
    turbo = load_file(world.world_paths(root).turbo / "unet" / "diffusion_pytorch_model.safetensors")
    for name, folder in folders.items():
        assert specs[name].source == str(folder) and specs[name].kind == "one-step"
        assert specs[name].dtype == "float32"
        assert json.loads((folder / "bench_demo.json").read_text())["key"]["artefact"] in name
        model = load_model(specs[name])
        images, finite = Sampler(model, seed=0)(["a handwritten digit three", "a handwritten digit seven"], [0, 1])
        assert images.shape == (2, 8, 8, 3) and images.dtype.name == "uint8" and finite.all()
    # Training moved the students away from their inits (A from the teacher, B from demo-turbo).
    a, b = _weights(folders["demo-vsd-full"]), _weights(folders["demo-vsd-lora-clip"])
    assert any(not torch.equal(a[k], teacher[k]) for k in a)
    assert any(not torch.equal(b[k], turbo[k]) for k in b)
    assert not [p for p in students.student_paths(root).root.iterdir() if p.name.startswith(".")]
    assert not (folders["demo-vsd-full"] / "checkpoints").exists()  # resume state is dropped when complete


def test_merged_is_half_of_each(tiny):
    _, folders, _ = tiny
    a, b = _weights(folders["demo-vsd-full"]), _weights(folders["demo-vsd-lora-clip"])
    merged = _weights(folders["demo-merged"])
    assert merged.keys() == a.keys() == b.keys()
    for key in merged:
        assert torch.equal(merged[key], 0.5 * a[key].float() + 0.5 * b[key].float()), key
    record = json.loads((folders["demo-merged"] / "merge.json").read_text())
    assert record["lam"] == 0.5


def test_lora_student_records_tau_and_clip_activity(tiny):
    _, folders, _ = tiny
    marker = json.loads((folders["demo-vsd-lora-clip"] / "bench_demo.json").read_text())
    tau = marker["options"]["clip_tau"]
    assert marker["tau"]["q10"] <= tau <= marker["tau"]["q50"]  # the 25th percentile of the init's cosines
    active = marker["summary"]["clip_active"]
    assert 0 <= active["mean"] <= 1 and active["steps"] >= 1
    assert (folders["demo-vsd-lora-clip"] / "unet_lora" / "adapter_config.json").exists()


def test_second_call_trains_nothing_and_other_settings_are_refused(tiny, monkeypatch, capsys):
    root, folders, _ = tiny
    mtimes = {p: p.stat().st_mtime_ns for p in students.student_paths(root).root.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("a cached student was trained again")

    monkeypatch.setattr(students, "_start", fail)
    monkeypatch.setattr(students, "_merge", fail)
    capsys.readouterr()
    assert students.ensure_students(root, quick=True) == folders
    assert capsys.readouterr() == ("", "")  # nothing trained, nothing said
    assert {p: p.stat().st_mtime_ns for p in students.student_paths(root).root.rglob("*")} == mtimes
    with pytest.raises(UserError, match="other settings"):
        students.ensure_students(root, quick=False)


def test_students_need_a_world(tmp_path):
    with pytest.raises(UserError, match="build the world first"):
        students.ensure_students(tmp_path / "nothing", quick=True)


def test_demo_suite_lists_students_and_runs_the_sweeps(tiny, monkeypatch):
    import pandas as pd

    from bench import run
    from bench.demo import suite

    root, folders, _ = tiny
    listed = students.student_models(root)
    assert {name: spec.source for name, spec in listed.items()} == {k: str(v) for k, v in folders.items()}
    for sweep in suite.SWEEPS:
        assert {sweep.a, sweep.b} <= set(listed) | {"demo-turbo"}

    base = root.parents[2]  # the run's working directory: results/demo-quick/world lives under it
    monkeypatch.chdir(base)
    _tiny_settings(monkeypatch)
    monkeypatch.setattr(suite, "SWEEPS", (SweepSpec("demo-vsd-full", "demo-vsd-lora-clip", "0,0.5,1"),))
    # One process: ranks started anew would not see the tiny settings patched into this one.
    run.main(["--suite", "demo", "--quick", "--n", "20", "--batch-size", "10", "--shard-size", "10", "--processes",
              "1", "--models", "demo-onestep-init,demo-vsd-full,demo-vsd-lora-clip,demo-merged", "--grid", "2"])
    table = pd.read_csv(base / "results" / "demo-quick" / "table.csv").set_index("model")
    assert {"demo-vsd-full", "demo-vsd-lora-clip", "demo-merged"} <= set(table.index)
    assert not (base / "results" / "demo-quick" / "sweep-demo-vsd-full-demo-vsd-lora-clip").exists()  # --models

    # The default run (no --models) adds the sweep; its ends are the students' own rows, and demo.md links it.
    monkeypatch.setattr(suite, "demo_suite", _only(suite.demo_suite, ("demo-vsd-full", "demo-vsd-lora-clip")))
    run.main(["--suite", "demo", "--quick", "--n", "20", "--batch-size", "10", "--shard-size", "10", "--grid", "2",
              "--processes", "1"])
    sweep = pd.read_csv(base / "results" / "demo-quick" / "sweep-demo-vsd-full-demo-vsd-lora-clip" / "sweep.csv")
    assert list(sweep["w"]) == [0.0, 0.5, 1.0]
    for w, name in ((0.0, "demo-vsd-full"), (1.0, "demo-vsd-lora-clip")):
        assert sweep.set_index("w").loc[w, "fid"] == pytest.approx(table.loc[name, "fid"], abs=1e-9)
    report = (base / "reports" / "demo-quick.md").read_text()
    assert "(demo-quick-sweep-demo-vsd-full-demo-vsd-lora-clip.md)" in report
    assert (base / "reports" / "demo-quick-sweep-demo-vsd-full-demo-vsd-lora-clip.md").exists()


def _only(factory, names):
    """``demo_suite`` with fewer default models, to keep the default run of the test short."""

    def wrapped(config):
        return dataclasses.replace(factory(config), default_models=names)

    return wrapped
