"""End to end: ``python -m bench.run`` on tiny folder models, a synthetic COCO tree, stand-in extractors."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench import suites
from bench.config import from_namespace
from bench.errors import UserError
from bench.generate import Sampler
from bench.load import load_model
from bench.processes import free_port
from bench.registry import ModelSpec
from bench.run import build_parser
from bench.sampling import alphas_cumprod, sample_noise, x0_from_eps
from bench.suites import RunConfig
from bench.testing import make_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
STANDINS = ["--fid-features", "tests.standins:PixelStats", "--clip-features", "tests.standins:HashedText"]
N_IMAGES = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("world")
    coco = base / "coco"
    (coco / "val2014").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k in range(N_IMAGES):
        image_id = 1000 - k * 7  # out of id order on purpose
        name = f"COCO_val2014_{image_id:012d}.jpg"
        size = (48 + 4 * (k % 3), 40 + 2 * (k % 5))
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L") if k == 3 else Image.fromarray(pixels)
        image.save(coco / "val2014" / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for c in range(2):
            annotations.append({"id": 10 * k + c, "image_id": image_id, "caption": f"a photo {k} of thing {c}"})
    (coco / "annotations").mkdir()
    (coco / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images,
                                                                            "annotations": annotations}))
    one = make_tiny_pipeline(base / "tiny-onestep", seed=0)
    multi = make_tiny_pipeline(base / "tiny-multistep", seed=1)
    return {"base": base, "coco": coco, "one": one, "multi": multi}


def run_bench(args, cwd, check=True, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"bench.run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def common(world, out, n=N_IMAGES):
    return ["--coco", str(world["coco"]), "--n", str(n), "--out", str(out), "--report", str(out) + ".md",
            "--cache-dir", str(world["base"] / "cache"), "--batch-size", "3", "--shard-size", "8", *STANDINS]


def test_end_to_end_two_models(world, tmp_path):
    models = f"one={world['one']},multi={world['multi']}"
    start = time.time()
    result = run_bench(["--models", models, *common(world, tmp_path / "run")], cwd=tmp_path)
    assert time.time() - start < 120
    assert "Loading weights" not in result.stderr  # the libraries' per-checkpoint bars are hidden
    out = tmp_path / "run"
    table = pd.read_csv(out / "table.csv")
    assert list(table.columns[:7]) == ["model", "n_samples", "fid", "fid_inf", "precision", "recall", "clip_score"]
    for metric in ("fid", "fid_inf", "precision", "recall", "clip_score"):  # every metric has its 95% interval
        assert (table[f"{metric}_lo"] <= table[metric]).all() and (table[metric] <= table[f"{metric}_hi"]).all()
    assert list(table["model"]) == ["one", "multi"] and (table["n_samples"] == N_IMAGES).all()
    assert np.isfinite(table[["fid", "precision", "recall", "clip_score"]].to_numpy()).all()
    report = (tmp_path / "run.md").read_text()
    assert "| one |" in report and "grid.png" in report
    assert (tmp_path / "run" / "grid.png").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"]["n"] == N_IMAGES and manifest["seed"] == 0
    assert set(manifest["models"]) == {"one", "multi"} and torch.__version__.startswith(manifest["versions"]["torch"])
    assert manifest["models"]["one"]["spec"]["source"] == str(world["one"])
    metrics = json.loads((out / "one" / "metrics.json").read_text())["metrics"]
    assert metrics["fid"] == pytest.approx(table.loc[0, "fid"])
    # The protocol card: what made every number, and each departure from the paper's protocol flagged once.
    card = manifest["protocol_card"]
    assert card["lines"]["reference images"] == N_IMAGES and card["lines"]["noise seed"] == 0
    assert card["models"]["one"]["dtype"] == "float32" and card["models"]["one"]["sampler"] == "one step at t = 999"
    assert card["models"]["multi"]["device"] == card["models"]["one"]["device"]
    assert any("reference images: 24 (the paper: 40504)" in d for d in card["deviations"])
    assert result.stderr.count("warning: reference images: 24 (the paper: 40504)") == 1
    assert "## Protocol card" in report and "⚠ reference images: 24" in report
    page = (tmp_path / "run.html").read_text()  # the browsable report beside it (tested in a browser: test_html)
    assert "run.html" in report and '"model":"one"' in page and "gallery/one/" in page
    assert "one generated in float32" not in report  # the paper's inference dtype: not a departure

    # --metrics-only recomputes the same numbers from the store without a model.
    (out / "one" / "metrics.json").unlink()
    run_bench(["--models", models, "--metrics-only", *common(world, out)], cwd=tmp_path)
    again = pd.read_csv(out / "table.csv")
    pd.testing.assert_frame_equal(table.drop(columns=["metrics_s"]), again.drop(columns=["metrics_s"]))


def test_batch_size_does_not_change_images(world):
    for spec in [ModelSpec("one", str(world["one"])),
                 ModelSpec("multi", str(world["multi"]), kind="multi-step", steps=3, guidance_scale=4.5)]:
        sampler = Sampler(load_model(spec), seed=5)
        prompts = [f"prompt number {i}" for i in range(8)]
        by_batch = {}
        for batch in (1, 3, 8):
            chunks = [sampler(prompts[i:i + batch], range(i, min(i + batch, 8)))[0] for i in range(0, 8, batch)]
            by_batch[batch] = np.concatenate(chunks)
        # The noise is bitwise identical; BLAS kernels round differently at other batch sizes, which can flip
        # a handful of pixels by one level after a 3-step loop, never more.
        for batch in (3, 8):
            difference = np.abs(by_batch[1].astype(int) - by_batch[batch])
            assert difference.max() <= 1 and (difference > 0).mean() < 2e-3
        assert not np.array_equal(by_batch[8][0], by_batch[8][1])


def test_noise_is_a_pure_function_of_seed_and_index():
    together = sample_noise(7, [0, 1, 2, 3], (4, 8, 8))
    apart = torch.cat([sample_noise(7, [i], (4, 8, 8)) for i in (3, 1)])
    assert torch.equal(together[[3, 1]], apart)
    assert not torch.equal(sample_noise(8, [0], (4, 8, 8)), together[:1])


def test_onestep_x0_matches_hand_computation():
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    abar = float(alphas_cumprod(config)[999])
    assert abar == pytest.approx(0.0046601, abs=5e-8)
    z, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.25]])
    expected = [(1.0 - (1 - 0.0046601) ** 0.5 * 0.5) / 0.0046601 ** 0.5,
                (-2.0 - (1 - 0.0046601) ** 0.5 * 0.25) / 0.0046601 ** 0.5]
    assert x0_from_eps(z, eps, abar)[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_kill_and_resume_gives_the_same_result(world, tmp_path):
    multi = f"multi={world['multi']}"
    # A 20-step model so that a shard takes long enough to kill the run between shards.
    spec_args = lambda out: ["--models", multi, *common(world, out)]  # noqa: E731
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "bench.run", *spec_args(killed)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not (killed / "multi" / "shard-00000.npz").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (killed / "multi").glob("shard-*.npz")}
    assert "shard-00000.npz" in done and len(done) < 3, "the run was not interrupted between shards"

    run_bench(spec_args(killed), cwd=tmp_path)
    for name, mtime in done.items():  # completed shards were not regenerated
        assert (killed / "multi" / name).stat().st_mtime_ns == mtime
    straight = tmp_path / "straight"
    run_bench(spec_args(straight), cwd=tmp_path)
    for shard in sorted((straight / "multi").glob("shard-*.npz")):
        a, b = np.load(shard), np.load(killed / "multi" / shard.name)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
    cols = ["fid", "precision", "recall", "clip_score"]
    pd.testing.assert_frame_equal(pd.read_csv(straight / "table.csv")[cols], pd.read_csv(killed / "table.csv")[cols])

    # A truncated shard is detected and regenerated; the others are kept.
    victim = killed / "multi" / "shard-00001.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    kept = (killed / "multi" / "shard-00002.npz").stat().st_mtime_ns
    run_bench(spec_args(killed), cwd=tmp_path)
    assert np.array_equal(np.load(victim)["features_fid"], np.load(straight / "multi" / victim.name)["features_fid"])
    assert (killed / "multi" / "shard-00002.npz").stat().st_mtime_ns == kept


@pytest.mark.parametrize("case", ["unknown-model", "broken-folder", "missing-coco", "empty-captions", "n-too-large",
                                  "n-too-small", "same-name-twice", "not-a-device", "demo-given-coco-options",
                                  "preset-with-captions"])
def test_bad_input_one_line_and_results_untouched(world, tmp_path, case):
    out = tmp_path / "results" / "run"
    out.mkdir(parents=True)
    (out / "table.csv").write_text("model,fid\nprevious,1.0\n")
    args = common(world, out)
    models = f"one={world['one']}"
    if case == "unknown-model":
        models = "sdturbo,sdturb0"
    elif case == "broken-folder":
        broken = tmp_path / "broken"
        (broken / "unet").mkdir(parents=True)
        (broken / "model_index.json").write_text("{}")
        (broken / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel", "in_channels": "x"}')
        models = f"broken={broken}"
    elif case == "missing-coco":
        args[args.index("--coco") + 1] = str(tmp_path / "nowhere")
    elif case == "empty-captions":
        (tmp_path / "captions.txt").write_text("")
        args += ["--captions", str(tmp_path / "captions.txt")]
    elif case == "n-too-large":
        args[args.index("--n") + 1] = str(N_IMAGES + 1)
    elif case == "n-too-small":  # precision/recall's k = 3 needs 4 samples: refused before generating
        args[args.index("--n") + 1] = "3"
    elif case == "same-name-twice":  # both would share one store, and one model's samples be reported twice
        models = f"one={world['one']},one={world['multi']}"
    elif case == "not-a-device":
        args += ["--device", "gpu"]
    elif case == "demo-given-coco-options":  # refused before the demo world is built
        args += ["--suite", "demo"]
    elif case == "preset-with-captions":
        (tmp_path / "captions.txt").write_text("a cat\n" * N_IMAGES)
        args += ["--captions", str(tmp_path / "captions.txt"), "--preset", "random"]
    result = run_bench(["--models", models, *args], cwd=tmp_path, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("bench.run: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (out / "table.csv").read_text() == "model,fid\nprevious,1.0\n"
    assert "--" in lines[0] or "=" in lines[0] or "valid" in lines[0].lower()


@pytest.mark.slow
def test_two_processes_give_the_same_table(world, tmp_path):
    models = f"one={world['one']}"
    # One thread per process in both runs (torchrun's default): the thread count moves float rounding in the
    # UNet, enough to flip the odd pixel by one level.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "bench.run", "--models", models,
                             *common(world, tmp_path / "single")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    # `--multi_gpu` is accelerate's torchrun launcher; on a CPU it makes a gloo group (`--cpu` starts one process).
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--main_process_port", str(free_port()), "-m", "bench.run", "--models", models,
                             *common(world, tmp_path / "double")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # --processes 2 launches the same two ranks itself.
    own = subprocess.run([sys.executable, "-m", "bench.run", "--models", models, "--processes", "2",
                          *common(world, tmp_path / "own")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert own.returncode == 0, own.stderr[-3000:]
    cols = ["model", "n_samples", "fid", "precision", "recall", "clip_score"]
    for run in ("double", "own"):
        assert json.loads((tmp_path / run / "manifest.json").read_text())["device"]["processes"] == 2
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "single" / "table.csv")[cols],
                                      pd.read_csv(tmp_path / run / "table.csv")[cols])


def test_a_failing_rank_stops_the_others_and_gives_its_exit_code(tmp_path, monkeypatch, capfd):
    from bench.processes import relaunch

    (tmp_path / "partner_fails.py").write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    sys.exit('rank 1: why it failed')\n"
        "time.sleep(600)  # rank 0 would wait for rank 1 forever\n")
    (tmp_path / "main_fails.py").write_text(  # rank 0's one line breaks rank 1's barrier: rank 0's line is shown
        "import os, sys, time\n"
        "if os.environ['RANK'] == '0':\n"
        "    sys.exit('bench.run: error: the one line')\n"
        "time.sleep(0.5)\n"
        "raise RuntimeError('broken barrier')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    started = time.time()
    assert relaunch("partner_fails", [], 2) == 1
    assert time.time() - started < 60
    assert "rank 1: why it failed" in capfd.readouterr().err
    assert relaunch("main_fails", [], 2) == 1
    err = capfd.readouterr().err
    assert "bench.run: error: the one line" in err and "broken barrier" not in err


def test_processes_must_be_positive(capsys):
    from bench.run import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--suite", "demo", "--processes", "0"])
    assert exit_info.value.code == 2
    assert "--processes must be positive" in capsys.readouterr().err


def test_markdown_table_puts_the_paper_beside_rows_that_have_one():
    from bench.report import markdown_table

    metrics = dict(n_samples=30000, fid=17.1, precision=0.6, recall=0.4, clip_score=0.33)
    turbo, local = ModelSpec("sdturbo", "x", paper_row="SD Turbo"), ModelSpec("mine", "y")
    table = markdown_table([turbo, local], {"sdturbo": metrics, "mine": metrics}).splitlines()
    assert table[0].startswith("| model | N | fid (ours / paper / Δ) |")
    assert table[2] == "| sdturbo | 30000 | 17.10 / 16.10 / +1.00 | – | 0.600 / 0.65 / -0.050 | 0.400 / 0.35 / " \
                       "+0.050 | 0.330 / 0.33 / +0.000 |"
    assert table[3] == "| mine | 30000 | 17.10 | – | 0.600 | 0.400 | 0.330 |"
    alone = markdown_table([local], {"mine": metrics}).splitlines()  # e.g. the demo world: no paper column
    assert alone[0] == "| model | N | fid | fid_inf | precision | recall | clip_score |"
    with_interval = markdown_table([local], {"mine": {**metrics, "fid_lo": 16.5, "fid_hi": 17.7}}).splitlines()
    assert with_interval[2].startswith("| mine | 30000 | 17.10 [16.50, 17.70] |")


class _IndexSampler:
    """Images whose pixels are their sample index; records the order in which samples are generated."""

    model = type("Model", (), {"device": torch.device("cpu")})()

    def __init__(self):
        self.generated = []

    def latents(self, prompts, indices):
        self.generated += list(indices)
        return torch.as_tensor(np.asarray(indices), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 2, 3)

    def decode_images(self, latents):
        return latents.to(torch.uint8), torch.ones(len(latents), dtype=torch.bool)


class _SlowFirstPixel:
    def image_features(self, images):
        time.sleep(0.05)
        return images[:, 0, 0, :1].astype(np.float64)


def test_feature_pipeline_overlaps_shards_and_keeps_order():
    from bench.generate import FeaturePipeline

    sampler = _IndexSampler()
    pipeline = FeaturePipeline(sampler, lambda images: images, {"fid": _SlowFirstPixel()})
    shards = [("a", ["p"] * 4, [0, 1, 2, 3]), ("b", ["p"] * 3, [4, 5, 6]), ("c", ["p"] * 2, [7, 8])]
    counted, seen = [], []
    for key, arrays in pipeline.run_shards(shards, batch_size=2, progress=counted.append):
        seen.append((key, arrays["fid"][:, 0].tolist(), arrays["finite"].tolist(), len(sampler.generated)))
    assert [s[:2] for s in seen] == [("a", [0, 1, 2, 3]), ("b", [4, 5, 6]), ("c", [7, 8])]
    assert all(all(s[2]) for s in seen) and sum(counted) == 9
    assert seen[0][3] > 4  # shard b was already being generated when shard a was handed back

    first = next(pipeline.run_shards(shards, batch_size=2))  # a consumer may stop early
    assert first[0] == "a" and pipeline.run([f"p{i}" for i in range(3)], [9, 10, 11], 2)["fid"][:, 0].tolist() == \
        [9, 10, 11]
    pipeline.close()


def test_save_images_completes_the_pngs_of_a_finished_run_and_keeps_its_shards(world, tmp_path):
    out = tmp_path / "run"
    args = ["--models", f"one={world['one']}", *common(world, out, n=16), "--grid", "0"]
    run_bench(args, cwd=tmp_path)
    shards = {p.name: p.read_bytes() for p in (out / "one").glob("shard-*.npz")}
    table = pd.read_csv(out / "table.csv")
    assert len(shards) == 2 and not (out / "one" / "images").exists()

    (out / "one" / "shard-00001.npz").unlink()  # half the samples missing, the other half without PNGs
    run_bench([*args, "--save-images"], cwd=tmp_path)
    pngs = sorted(p.name for p in (out / "one" / "images").glob("*.png"))
    assert pngs == [f"{i:08d}.png" for i in range(16)]
    assert (out / "one" / "shard-00000.npz").read_bytes() == shards["shard-00000.npz"]  # kept as it was
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv")[["fid", "clip_score"]], table[["fid", "clip_score"]])
    umask = os.umask(0o022)
    os.umask(umask)
    for written in (out / "table.csv", out / "one" / "images" / "00000000.png"):  # not mkstemp's 0600
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask
    image = np.asarray(Image.open(out / "one" / "images" / "00000005.png"))
    sampler = Sampler(load_model(ModelSpec("one", str(world["one"]))), seed=0)
    config = from_namespace(RunConfig, build_parser().parse_args(common(world, out, n=16)))
    captions = suites.build(config)[0].protocol.captions
    assert np.array_equal(image, sampler([captions[5]], [5])[0][0])


def test_png_writer_bounds_its_backlog_and_waits_per_index(tmp_path, monkeypatch):
    import threading

    from bench import report

    release, started = threading.Event(), []
    original = report.PngWriter._write

    def slow_write(self, image, index):
        started.append(index)
        release.wait(10)
        original(self, image, index)

    monkeypatch.setattr(report.PngWriter, "_write", slow_write)
    writer = report.PngWriter(tmp_path, workers=1, max_pending=2)
    images = np.zeros((3, 4, 4, 3), np.uint8)
    submitter = threading.Thread(target=writer.submit, args=(images, [0, 1, 2]))
    submitter.start()
    submitter.join(0.5)
    assert submitter.is_alive()  # the third image waits for a free slot
    release.set()
    submitter.join(10)
    writer.wait([0, 2])
    assert (tmp_path / "00000000.png").exists() and (tmp_path / "00000002.png").exists()
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00000000.png", "00000001.png", "00000002.png"]


def test_a_registered_name_pointed_at_a_folder_with_its_own_base_loads_that_base(world, tmp_path):
    from bench.registry import resolve

    unet_folder = tmp_path / "merged"
    load_model(ModelSpec("one", str(world["one"]))).unet.save_pretrained(unet_folder, safe_serialization=True)
    (unet_folder / "bench_base.json").write_text(json.dumps({"base": str(world["multi"])}))
    spec = resolve(f"sbv2={unet_folder}")  # the registry's sbv2 entry defaults to the SD-Turbo hub id
    assert spec.kind == "one-step" and load_model(spec).sources["base"] == str(world["multi"])
    assert spec.base == str(world["multi"])  # the spec names the base it loads, so its stores are recognised
    assert resolve(f"sbv2={world['one']}").base is not None  # a folder that does not say keeps the default
    from bench.registry import MODELS

    plain = dataclasses.replace(MODELS["merged"], source=str(unet_folder))  # plain `merged`: the pointer decides
    assert load_model(resolve("merged", {"merged": plain})).sources["base"] == str(world["multi"])


def test_a_new_grid_size_remakes_the_grid(world, tmp_path):
    out = tmp_path / "run"
    args = ["--models", f"one={world['one']}", *common(world, out, n=8)]
    run_bench([*args, "--grid", "4"], cwd=tmp_path)
    run_bench([*args, "--grid", "2"], cwd=tmp_path)
    assert np.load(out / "one" / "grid.npz")["indices"].tolist() == [0, 7]
    assert (out / "grid.png").exists()


def test_retrained_weights_at_the_same_path_are_refused_and_a_copy_is_not(world, tmp_path):
    import shutil

    model = tmp_path / "student"
    shutil.copytree(world["one"], model)
    out = tmp_path / "run"
    args = ["--models", f"one={model}", *common(world, out, n=8)]
    run_bench(args, cwd=tmp_path)
    table = (out / "table.csv").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]["one"]["weights"]) == {"unet", "base"}

    shutil.rmtree(model)  # the same weights copied again: new mtimes, same contents
    shutil.copytree(world["one"], model)
    run_bench(args, cwd=tmp_path)
    assert (out / "table.csv").read_text().split("\n")[1].split(",")[:3] == table.split("\n")[1].split(",")[:3]
    table = (out / "table.csv").read_text()  # (its timing column is new)

    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes((world["multi"] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())  # retrained
    result = run_bench(args, cwd=tmp_path, check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("bench.run: error:")]
    assert result.returncode != 0 and len(lines) == 1 and "other weights" in lines[0] and "unet" in lines[0]
    assert (out / "table.csv").read_text() == table
    run_bench([*args, "--metrics-only"], cwd=tmp_path)  # the stored samples need no weights to be evaluated


def test_a_store_from_before_weights_were_recorded_adopts_them(tmp_path):
    from bench.store import SampleStore

    old = SampleStore(tmp_path, 4, 2, {"model": "m"})
    old.claim()
    assert old.weights() is None
    SampleStore(tmp_path, 4, 2, {"model": "m"}).claim({"unet": "abc"})
    assert old.weights() == {"unet": "abc"}
    with pytest.raises(UserError, match="other weights"):
        SampleStore(tmp_path, 4, 2, {"model": "m"}).claim({"unet": "def"})


def test_extra_seeds_and_diversity_are_stored_apart_reported_and_recomputed(world, tmp_path):
    """--seeds: one store per seed and each metric's mean and std over the seeds; --diversity K: K seeds of a fixed
    prompt subset in a store of their own, per-prompt diversity with its interval; --metrics-only recomputes both."""
    out = tmp_path / "run"
    args = ["--models", f"one={world['one']}", *common(world, out, n=12), "--seeds", "1,2", "--diversity", "3",
            "--diversity-prompts", "4"]
    run_bench(args, cwd=tmp_path)
    table = pd.read_csv(out / "table.csv").set_index("model")
    assert (out / "one" / "seeds" / "1" / "store.json").exists() and (out / "one" / "seeds" / "2").is_dir()
    assert json.loads((out / "one" / "diversity" / "store.json").read_text())["fingerprint"]["provenance"][
        "diversity"] == {"prompts": [0, 4, 7, 11], "k": 3}
    row = table.loc["one"]
    assert row["seeds"] == 3 and row["fid_seeds_std"] > 0
    assert row["fid_seeds_mean"] != pytest.approx(row["fid"])  # other noise, other samples
    assert row["diversity_clip_lo"] <= row["diversity_clip"] <= row["diversity_clip_hi"] and row["diversity_clip"] > 0
    assert np.load(out / "one" / "diversity_clip_per_prompt.npy").shape == (4,)
    report = (tmp_path / "run.md").read_text()
    assert "Across noise seeds (mean ± std)" in report and "Per-prompt diversity" in report
    details = json.loads((out / "manifest.json").read_text())["models"]["one"]["details"]
    assert details["seed"] == 0 and details["n_resamples"] == 200 and set(details["methods"]) >= {"fid", "recall"}
    run_bench([*args, "--metrics-only"], cwd=tmp_path)
    again = pd.read_csv(out / "table.csv").set_index("model")
    columns = ["fid", "fid_lo", "fid_seeds_mean", "fid_seeds_std", "diversity_clip", "diversity_inception"]
    pd.testing.assert_series_equal(table.loc["one", columns], again.loc["one", columns])

    # Another model into the same folder: "one" is an earlier model now and keeps its diversity row.
    run_bench(["--models", f"multi={world['multi']}", *common(world, out, n=12)], cwd=tmp_path)
    report = (tmp_path / "run.md").read_text()
    assert "| one | " in report.split("Per-prompt diversity")[1] and "| multi |" in report
    assert "| one | 3 |" in report.split("Across noise seeds")[1]


def test_ranks_are_started_only_for_a_cpu_run_that_generates(monkeypatch):
    from types import SimpleNamespace

    from bench import processes

    started = []
    monkeypatch.setattr(processes, "relaunch", lambda module, argv, n: started.append((module, argv, n)) or 0)
    alone, under_launcher = SimpleNamespace(num_processes=1), SimpleNamespace(num_processes=2)
    config = RunConfig(suite="demo", processes=2)
    assert not processes.ran_as_ranks("bench.run", [], dataclasses.replace(config, processes=1), alone, "cpu")
    assert not processes.ran_as_ranks("bench.run", [], config, under_launcher, "cpu")  # already a rank
    assert not processes.ran_as_ranks("bench.run", [], dataclasses.replace(config, metrics_only=True), alone, "cpu")
    assert started == []
    with pytest.raises(UserError, match="accelerate launch"):
        processes.ran_as_ranks("bench.sweep_lambda", ["--a", "x"], config, alone, "cuda")
    assert processes.ran_as_ranks("bench.sweep_lambda", ["--a", "x"], config, alone, "cpu")
    assert started == [("bench.sweep_lambda", ["--a", "x"], 2)]
    monkeypatch.setattr(processes, "relaunch", lambda module, argv, n: 3)  # the ranks' code
    with pytest.raises(SystemExit) as failed:
        processes.ran_as_ranks("bench.run", [], config, alone, "cpu")
    assert failed.value.code == 3


def test_gallery_thumbnails_are_kept_from_generation(world, tmp_path, monkeypatch):
    """The page's gallery is saved from the samples as they are made: the report generates again only the samples
    the gallery does not hold (the lowest CLIP scores), and a kept thumbnail is the image a fresh rendering gives."""
    from bench import engine
    from bench.pages import gallery_indices
    from bench.run import main

    rendered, render = [], engine.render

    def spy(model, config, device, protocol, items):
        rendered.extend((model.spec.name, item.key) for item in items)
        return render(model, config, device, protocol, items)

    monkeypatch.setattr(engine, "render", spy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    args = ["--models", f"one={world['one']},multi={world['multi']}", "--gallery", "6", *common(world, out, n=16)]
    main(args)
    gallery, folder = {f"{i:08d}" for i in gallery_indices(16, 6)}, tmp_path / "run" / "gallery"
    kept = {(model, path.stem): np.asarray(Image.open(path).convert("RGB")).astype(int)
            for model in ("one", "multi") for path in (folder / model).iterdir()}
    assert {(model, key) for model in ("one", "multi") for key in gallery} <= set(kept)
    assert {key for _, key in rendered} and not {key for _, key in rendered} & gallery

    rendered.clear()
    shutil.rmtree(folder)  # the stores are complete: this run only renders, every thumbnail
    main(args)
    assert {(model, key) for model, key in rendered} == set(kept)
    for (model, key), image in kept.items():
        again = np.asarray(Image.open(folder / model / f"{key}.webp").convert("RGB")).astype(int)
        assert np.abs(again - image).mean() < 0.5, (model, key)


def test_tokenizer_is_parsed_once_until_its_files_change(world, tmp_path):
    import shutil

    from bench.load import load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(world["one"] / "tokenizer", folder / "tokenizer")
    first = load_tokenizer(str(folder))
    assert load_tokenizer(str(folder)) is first and load_tokenizer(str(folder / ".." / "model")) is first
    written = sorted((folder / "tokenizer").iterdir())[0]  # as when a model is written again in place
    os.utime(written, ns=(written.stat().st_atime_ns, written.stat().st_mtime_ns + 10**9))
    again = load_tokenizer(str(folder))
    assert again is not first and again("a cat").input_ids == first("a cat").input_ids
