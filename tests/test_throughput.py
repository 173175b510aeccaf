"""``python -m bench.throughput --tiny`` end to end on the CPU: every stage's row, and the equivalence check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tiny(out: Path, *extra: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "bench.throughput", "--tiny", "--device", "cpu", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "throughput.json"
    stdout = run_tiny(out, "--n-onestep", "16", "--n-multistep", "8", "--batch-size", "8", "--naive-batch-size", "8",
                      "--check-equivalence", "8")
    return stdout, json.loads(out.read_text())


def test_table_has_every_stage_with_positive_throughput(tiny_run):
    stdout, report = tiny_run
    stages = report["stages"]
    assert list(stages) == ["naive-1step", "ours-1step", "naive-25step", "ours-25step"]
    assert report["meta"]["errors"] == {}
    for name, row in stages.items():
        assert row["images"] == (16 if "1step" in name else 8) and not row["truncated"]
        assert row["img_s"] > 0 and row["wall_s"] > 0 and row["flops_per_image"] > 0
        assert row["label"] in stdout and row["label"] in report["table"]
    assert stages["ours-1step"]["x_naive"] > 0 and stages["ours-25step"]["x_naive"] > 0
    assert "components_ms_per_image" not in stages["naive-1step"]
    # 25 steps with cfg cost about 50 one-step UNet passes: the FLOP count says so
    assert stages["naive-25step"]["flops_per_image"] > 10 * stages["naive-1step"]["flops_per_image"]
    for row in ("naive one-step (PNG inline)", "ours one-step", "naive 25-step cfg 7.5", "ours 25-step cfg 7.5"):
        assert row in report["table"]
    assert "n/a" in report["table"]  # no FLOP-limit fraction or GPU busy share on a CPU
    assert report["meta"]["device_type"] == "cpu" and report["meta"]["torch"]


def test_our_stages_time_their_parts(tiny_run):
    stdout, report = tiny_run
    one, many = (report["stages"][name]["components_ms_per_image"] for name in ("ours-1step", "ours-25step"))
    assert list(one) == [part.replace("x25", "x1") for part in many]
    assert "latents (text, noise, UNet x25)" in many and "clip features (CPU preprocessing + forward)" in many
    assert all(value >= 0 for value in [*one.values(), *many.values()])
    # 25 cfg steps run 50 UNet passes where one-step runs one; the VAE decode is the same work in both
    assert many["latents (text, noise, UNet x25)"] > 5 * one["latents (text, noise, UNet x1)"]
    assert stdout.count("parts, one at a time") == 2 * 2  # each stage's line, then the final table's


def test_equivalence_is_exact_on_the_cpu(tiny_run):
    stdout, report = tiny_run
    eq = report["equivalence"]
    assert eq["images"] == 8
    assert eq["image_max_abs_diff"] == 0 and eq["inception_max_abs_diff"] == 0 and eq["clip_max_abs_diff"] == 0
    assert abs(eq["fid_plain_vs_fast"]) < 1e-6
    assert "equivalence (plain vs fast, one-step)" in stdout


def test_budget_guard_skips_stages_and_still_writes(tmp_path):
    stdout = run_tiny(tmp_path / "t.json", "--budget-s", "0", "--check-equivalence", "8")
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["stages"] == {} and report["equivalence"] is None
    assert "naive one-step (PNG inline): skipped" in stdout and "flops_per_image" in report["meta"]


def test_zero_images_skip_a_sampling_mode_and_naive_stages_can_be_capped(tmp_path):
    run_tiny(tmp_path / "t.json", "--n-onestep", "16", "--n-multistep", "0", "--naive-max-images", "8",
             "--batch-size", "8", "--naive-batch-size", "8", "--no-components")
    stages = json.loads((tmp_path / "t.json").read_text())["stages"]
    assert list(stages) == ["naive-1step", "ours-1step"]
    assert stages["naive-1step"]["images"] == 8 and stages["ours-1step"]["images"] == 16
    assert "components_ms_per_image" not in stages["ours-1step"]
