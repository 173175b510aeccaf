"""Nothing a user does wastes GPU hours: checks before the first sample, stores keyed by what makes the samples,
one line for every error with earlier results untouched, kills that resume to byte-identical shards.

D1-D10 name the defects of issue #14 that each test reproduces.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.test_run import N_IMAGES, ROOT, common, run_bench, world  # noqa: F401  (world is a fixture)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*.tmp")]


@pytest.fixture(scope="module")
def finished_run(world, tmp_path_factory):  # noqa: F811
    """A finished run folder (two models), made once: the runs below never write into it."""
    base = tmp_path_factory.mktemp("finished")
    out = base / "results" / "run"
    run_bench(["--models", f"one={world['one']},multi={world['multi']}", *common(world, out, n=8)], cwd=base)
    return out


@pytest.fixture()
def done_run(finished_run, tmp_path):
    """A copy of the finished run whose bytes the failing run of each test must not change."""
    out = tmp_path / "results" / "run"
    shutil.copytree(finished_run, out)
    for report in finished_run.parent.glob("run.*"):  # the markdown and HTML reports beside it
        shutil.copy(report, out.parent / report.name)
    return out


def bad_copy(source: Path, target: Path, damage) -> Path:
    shutil.copytree(source, target)
    damage(target)
    return target


def truncate_unet(folder: Path) -> None:
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])


def nan_unet(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.weight"][:] = float("nan")
    save_file(state, weights)


CASES = ["corrupt-weights", "corrupt-reference", "other-batch-size", "out-is-a-file", "unreadable-store-json",
         "null-caption", "all-nan"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_earlier_results_byte_identical(world, tmp_path, done_run, case):  # noqa: F811
    """D1, D2, D3, D6, D7, D9: each case exits 2 with one line, before anything of the failing model is written."""
    out, coco = done_run, world["coco"]
    models = f"one={world['one']},multi={world['multi']}"
    args = common(world, out, n=8)
    if case == "corrupt-weights":  # D1
        models += f",broken={bad_copy(world['one'], tmp_path / 'broken', truncate_unet)}"
    elif case == "corrupt-reference":  # D2: found in the first minute, naming the file
        coco = tmp_path / "coco"
        shutil.copytree(world["coco"], coco)
        victim = sorted((coco / "val2014").iterdir())[5]
        victim.write_bytes(b"\xff\xd8 not a jpeg")
        args[args.index("--coco") + 1] = str(coco)
        models += f",fresh={world['one']}"
    elif case == "other-batch-size":  # D3: batch size decides rounding, so it keys the samples
        args[args.index("--batch-size") + 1] = "2"
    elif case == "out-is-a-file":  # D6
        args[args.index("--out") + 1] = str(out / "table.csv")
    elif case == "unreadable-store-json":  # D6: shards depend on it, so it is not silently replaced
        (out / "one" / "store.json").write_text('{"key": "trunc')
    elif case == "null-caption":  # D7: refused at load with its index, not mid-generation
        coco = tmp_path / "coco"
        shutil.copytree(world["coco"], coco)
        annotations = json.loads((coco / "annotations" / "captions_val2014.json").read_text())
        annotations["annotations"][3]["caption"] = None
        (coco / "annotations" / "captions_val2014.json").write_text(json.dumps(annotations))
        args[args.index("--coco") + 1] = str(coco)
    elif case == "all-nan":  # D9: the message names the cause, not "raise --n"
        models += f",nan={bad_copy(world['one'], tmp_path / 'nan', nan_unet)}"
        args += ["--max-nonfinite", "1"]
    before = snapshot(out)
    started = time.time()
    result = run_bench(["--models", models, *args], cwd=tmp_path, check=False)
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("bench.run: error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    message = lines[0]
    expected = {"corrupt-weights": "broken", "corrupt-reference": "corrupt", "other-batch-size": "generation",
                "out-is-a-file": "is a file", "unreadable-store-json": "unreadable", "null-caption": "annotation 3",
                "all-nan": "NaN"}[case]
    assert expected in message
    if case == "all-nan":
        assert "--n" not in message.replace("--max-nonfinite", "")
        before = {k: v for k, v in before.items() if not k.startswith(("table.csv", "manifest.json"))}
        after = {k: v for k, v in snapshot(out).items() if k in before}
        assert after == before  # the healthy models' stores; the nan model's samples exist, its metrics do not
        return
    assert snapshot(out) == before
    assert not temporaries(out)
    if case == "corrupt-reference":
        assert victim.name in message and time.time() - started < 60
    if case in ("corrupt-weights", "corrupt-reference"):
        assert not (out / "broken").exists() and not (out / "fresh").exists()  # nothing claimed before the failure


def test_a_repaired_model_runs_without_being_refused_as_other_weights(world, tmp_path):  # noqa: F811
    """D1: a model that failed to load left no weights identity behind, so the repaired files are accepted."""
    model = bad_copy(world["one"], tmp_path / "model", truncate_unet)
    out = tmp_path / "run"
    args = ["--models", f"m={model}", *common(world, out, n=8)]
    assert run_bench(args, cwd=tmp_path, check=False).returncode == 2
    assert not (out / "m" / "store.json").exists()
    shutil.copy(world["one"] / "unet" / "diffusion_pytorch_model.safetensors",
                model / "unet" / "diffusion_pytorch_model.safetensors")
    run_bench(args, cwd=tmp_path)
    assert pd.read_csv(out / "table.csv")["model"].tolist() == ["m"]


def test_repairing_a_reference_image_keeps_every_generated_sample(world, tmp_path):  # noqa: F811
    """D2: the reference set keys the metric caches, not the samples: a repaired (changed) reference file keeps
    every shard, and only the metrics change."""
    coco = tmp_path / "coco"
    shutil.copytree(world["coco"], coco)
    out = tmp_path / "run"
    args = ["--models", f"one={world['one']}", *common(world, out, n=8)]
    args[args.index("--coco") + 1] = str(coco)
    run_bench(args, cwd=tmp_path)
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "one").glob("shard-*.npz")}
    victim = sorted((coco / "val2014").iterdir())[0]
    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(victim)  # a replacement file: new reference identity
    run_bench(args, cwd=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "one").glob("shard-*.npz")} == shards


def test_a_second_models_list_into_the_same_folder_keeps_every_row(world, tmp_path):  # noqa: F811
    """D9: rows are updated, never dropped: the table holds every model evaluated into the folder."""
    out = tmp_path / "run"
    run_bench(["--models", f"one={world['one']}", *common(world, out, n=8)], cwd=tmp_path)
    first = pd.read_csv(out / "table.csv").set_index("model")
    run_bench(["--models", f"multi={world['multi']}", *common(world, out, n=8)], cwd=tmp_path)
    table = pd.read_csv(out / "table.csv").set_index("model")
    assert table.index.tolist() == ["one", "multi"]
    assert table.loc["one", "fid"] == pytest.approx(first.loc["one", "fid"])
    assert "| one |" in (tmp_path / "run.md").read_text()
    # Another seed into the same folder would mix settings in one table: refused.
    other = run_bench(["--models", f"two={world['one']}", "--seed", "1", *common(world, out, n=8)], cwd=tmp_path,
                      check=False)
    assert other.returncode == 2 and "seed" in other.stderr and not (out / "two").exists()


def test_stale_temporaries_of_killed_writes_are_removed_and_live_ones_kept(world, tmp_path):  # noqa: F811
    """D8: a ``kill -9`` during an atomic write leaves ``.<name>.<pid>.<random>.tmp``; the next run removes those
    whose process is gone."""
    out = tmp_path / "run"
    args = ["--models", f"one={world['one']}", *common(world, out, n=8)]
    run_bench(args, cwd=tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [out / "one" / f".shard-00000.npz.{dead_pid}.abc123.tmp", out / f".table.csv.{dead_pid}.x9.tmp",
             Path(common(world, out)[common(world, out).index("--cache-dir") + 1]) / f".a.npy.{dead_pid}.q.tmp"]
    live = out / "one" / f".shard-00001.npz.{os.getpid()}.zz.tmp"
    for path in [*stale, live]:
        path.write_bytes(b"partial")
    run_bench(args, cwd=tmp_path)
    assert not any(p.exists() for p in stale) and live.exists()


def test_environment_errors_are_one_line_and_exit_2(world, tmp_path, monkeypatch, capsys):  # noqa: F811
    """D6: a full disk or a folder we may not write (root ignores permissions, so the error is injected)."""
    import bench.features.cache
    from bench import engine, run, store

    out = tmp_path / "run"
    for code in (errno.ENOSPC, errno.EACCES):
        def failing(path, write, code=code):
            raise OSError(code, os.strerror(code), str(path))

        for module in (store, engine, bench.features.cache):  # every writer of the run
            monkeypatch.setattr(module, "atomic_write_bytes", failing)
        with pytest.raises(SystemExit) as exit_code:
            run.main(["--models", f"one={world['one']}", *common(world, out, n=8)])
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
        assert exit_code.value.code == 2 and len(err) == 1 and err[0].startswith("bench.run: error: cannot write")
        assert ("free disk space" if code == errno.ENOSPC else "writable") in err[0]


def test_an_unreadable_store_json_without_shards_is_treated_as_missing(world, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    (out / "one").mkdir(parents=True)
    (out / "one" / "store.json").write_text('{"key": "trunc')  # a write killed before any shard existed
    run_bench(["--models", f"one={world['one']}", *common(world, out, n=8)], cwd=tmp_path)
    assert json.loads((out / "one" / "store.json").read_text())["key"]


def test_throughput_tiny_never_writes_over_the_gpu_record():
    """D10."""
    from bench.throughput.__main__ import GPU_RECORD, parse_args

    assert Path(parse_args(["--tiny"]).out).resolve() != Path(GPU_RECORD).resolve()
    with pytest.raises(SystemExit) as code:
        parse_args(["--tiny", "--out", GPU_RECORD])
    assert code.value.code == 2


def fault_injection(world, tmp_path, kills: int, seed: int):  # noqa: F811
    """Kill a multi-shard run with SIGKILL at random moments, resume it each time, then let it finish: the same
    table, byte-identical shards and no temporary file, as an uninterrupted run."""
    models = ["--models", f"one={world['one']},multi={world['multi']}"]
    straight = tmp_path / "straight"
    begin = time.time()
    run_bench([*models, *common(world, straight)], cwd=tmp_path)
    duration = time.time() - begin
    killed = tmp_path / "killed"
    args = [*models, *common(world, killed)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    rng = random.Random(seed)
    for _ in range(kills):
        process = subprocess.Popen([sys.executable, "-m", "bench.run", *args], cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(0.3, 1.0) * duration)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    run_bench(args, cwd=tmp_path)
    cols = ["model", "fid", "precision", "recall", "clip_score", "kid"]
    pd.testing.assert_frame_equal(pd.read_csv(straight / "table.csv")[cols], pd.read_csv(killed / "table.csv")[cols])
    for model in ("one", "multi"):
        shards = sorted(p.name for p in (straight / model).glob("shard-*.npz"))
        assert shards == sorted(p.name for p in (killed / model).glob("shard-*.npz")) and len(shards) == 3
        for name in shards:
            assert (straight / model / name).read_bytes() == (killed / model / name).read_bytes(), (model, name)
    assert not temporaries(killed, Path(common(world, killed)[common(world, killed).index("--cache-dir") + 1]))


@pytest.mark.slow
def test_fault_injection_five_kills(world, tmp_path):  # noqa: F811
    fault_injection(world, tmp_path, kills=5, seed=0)


@pytest.mark.soak
def test_fault_injection_twenty_kills(world, tmp_path):  # noqa: F811
    fault_injection(world, tmp_path, kills=20, seed=1)


def test_n_images_constant_is_the_world_size():
    assert N_IMAGES == 24  # common() defaults and the shard counts above assume it
