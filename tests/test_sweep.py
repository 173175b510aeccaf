"""Figure 3 machinery: in-memory merges evaluated through the bench; the ends equal the students."""

import json

import numpy as np
import pandas as pd
import pytest

from bench.errors import UserError
from bench.sweep import parse_grid, point_names
from bench.testing import make_tiny_pipeline, tiny_unet
from tests.test_run import STANDINS, run_bench


def test_grid_parsing():
    assert parse_grid("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_grid("1,0,0.5") == [0.0, 0.5, 1.0]
    assert len(parse_grid("0:1:0.1")) == 11
    for bad in ("0:2:0.5", "a:b", "0:1:0", ""):
        with pytest.raises(UserError):
            parse_grid(bad)


def test_sweep_points_get_distinct_names():
    assert point_names([0.0, 0.25, 1.0]) == ["w0.00", "w0.25", "w1.00"]  # the names earlier sweeps stored under
    assert point_names([0.0, 0.001, 1.0]) == ["w0.000", "w0.001", "w1.000"]
    assert len(set(point_names(parse_grid("0.4:0.6:0.005")))) == 41


def test_sweep_refuses_models(capsys):
    from bench.sweep_lambda import main

    with pytest.raises(SystemExit) as code:
        main(["--a", "x", "--b", "y", "--models", "z"])
    assert code.value.code == 2 and "--models" in capsys.readouterr().err


def test_sweep_ends_reproduce_the_students(tmp_path):
    from tests.test_run import ROOT  # noqa: F401  (the same subprocess environment as the run tests)

    a = make_tiny_pipeline(tmp_path / "a", seed=0)
    b = tmp_path / "b"
    tiny_unet(seed=3).save_pretrained(b, safe_serialization=True)
    (b / "bench_base.json").write_text(json.dumps({"base": str(a)}))
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"a small picture number {i}" for i in range(12)) + "\n")
    coco = tmp_path / "coco" / "val2014"
    coco.mkdir(parents=True)
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(coco / f"{i}.png")
    common = ["--coco", str(tmp_path / "coco"), "--captions", str(captions), "--n", "12", "--batch-size", "4",
              "--shard-size", "6", "--cache-dir", str(tmp_path / "cache"), *STANDINS]
    run_bench(["--models", f"A={a},B={b}", "--out", str(tmp_path / "ends"), "--report", str(tmp_path / "e.md"),
               *common], cwd=tmp_path)
    result = run_bench_sweep(["--a", f"A={a}", "--b", f"B={b}", "--lams", "0,0.5,1", "--out",
                              str(tmp_path / "sweep"), "--report", str(tmp_path / "sweep.md"), *common], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    ends = pd.read_csv(tmp_path / "ends" / "table.csv").set_index("model")
    assert list(sweep["w"]) == [0.0, 0.5, 1.0] and list(sweep["lambda_eq6"]) == [1.0, 0.5, 0.0]
    for w, name in [(0.0, "A"), (1.0, "B")]:
        row = sweep[sweep["w"] == w].iloc[0]
        for metric in ["fid", "precision", "recall", "clip_score"]:
            assert row[metric] == pytest.approx(ends.loc[name, metric], abs=1e-9), (w, metric)
        shard = tmp_path / "sweep" / f"w{w:.2f}" / "shard-00000.npz"
        assert np.array_equal(np.load(shard)["features_fid"],
                              np.load(tmp_path / "ends" / name / "shard-00000.npz")["features_fid"])
    middle = np.load(tmp_path / "sweep" / "w0.50" / "shard-00000.npz")["features_fid"]
    assert not np.array_equal(middle, np.load(tmp_path / "ends" / "A" / "shard-00000.npz")["features_fid"])
    report = (tmp_path / "sweep.md").read_text()
    assert "λ = 1 − w" in report and "Best FID at w =" in report
    assert (tmp_path / "sweep" / "figure3.png").exists()


def run_bench_sweep(args, cwd):
    import os
    import subprocess
    import sys

    from tests.test_run import ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bench.sweep_lambda", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
