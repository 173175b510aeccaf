"""``python -m bench.throughput --tiny`` end to end on the CPU: the three comparisons, each side at its best batch,
the parts of ours, and the equivalence check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = ["generation_1step", "end_to_end_1step", "end_to_end_25step"]


def run_tiny(out: Path, *extra: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "bench.throughput", "--tiny", "--device", "cpu", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "throughput.json"
    stdout = run_tiny(out, "--n-generation", "16", "--n-onestep", "16", "--n-multistep", "8",
                      "--naive-batches", "4,8", "--ours-batches", "4,8", "--check-equivalence", "8")
    return stdout, json.loads(out.read_text())


def test_three_comparisons_of_the_same_work_with_ratios(tiny_run):
    stdout, report = tiny_run
    comparisons = report["comparisons"]
    assert list(comparisons) == COMPARISONS and report["meta"]["errors"] == {}
    assert report["device"] == report["meta"]["device"]
    for name, row in comparisons.items():
        images = 8 if name.endswith("25step") else 16
        for side in ("naive", "ours"):
            assert row[side]["images"] == images and not row[side]["truncated"] and row[side]["img_s"] > 0
            assert f"{row['label']} / {side}" in stdout and f"{row['label']} / {side}" in report["table"]
        assert row["naive_img_s"] == row["naive"]["img_s"] and row["ours_img_s"] == row["ours"]["img_s"]
        assert row["ratio"] == pytest.approx(row["ours_img_s"] / row["naive_img_s"])
    # the end-to-end work adds two Inception passes and the CLIP tower to the same generation
    one, e2e, many = (comparisons[name]["flops_per_image"] for name in COMPARISONS)
    meta_flops = report["meta"]["flops_per_image"]
    assert e2e - one == pytest.approx(2 * meta_flops["inception"] + meta_flops["clip_image"])
    assert many > 10 * one  # 25 cfg steps: 50 UNet passes
    assert "targets: H100/H200 only" in report["table"] and "n/a" in report["table"]


def test_each_side_runs_at_the_fastest_of_its_candidates(tiny_run):
    _, report = tiny_run
    generation = report["comparisons"]["generation_1step"]
    for side in ("naive", "ours"):
        rates = {int(batch): rate for batch, rate in generation[side]["batch_rates"].items()}
        assert set(rates) == {4, 8} and generation[side]["batch"] == max(rates, key=rates.get)
        assert generation[f"{side}_batch"] == generation[side]["batch"]
    for name in COMPARISONS[1:]:  # the end-to-end runs take the batch each side found best
        for side in ("naive", "ours"):
            assert report["comparisons"][name][side]["batch"] == generation[side]["batch"]


def test_naive_end_to_end_reads_its_pngs_back(tiny_run):
    _, report = tiny_run
    naive = report["comparisons"]["end_to_end_1step"]["naive"]
    assert naive["features_s"] > 0 and naive["generation_s"] > 0
    assert naive["wall_s"] == pytest.approx(naive["features_s"] + naive["generation_s"])


def test_our_end_to_end_runs_time_their_parts(tiny_run):
    stdout, report = tiny_run
    one, many = (report["comparisons"][name]["ours"]["components_ms_per_image"] for name in COMPARISONS[1:])
    assert list(one) == [part.replace("x25", "x1") for part in many]
    assert {"fid features (CPU preprocessing + forward)", "pr features (CPU preprocessing + forward)",
            "clip features (CPU preprocessing + forward)"} <= set(many)
    assert all(value >= 0 for value in [*one.values(), *many.values()])
    # 25 cfg steps run 50 UNet passes where one-step runs one; the VAE decode is the same work in both
    assert many["latents (text, noise, UNet x25)"] > 5 * one["latents (text, noise, UNet x1)"]
    assert stdout.count("parts, one at a time") == 2 * 2  # each comparison's line, then the final table's


def test_equivalence_is_exact_on_the_cpu(tiny_run):
    stdout, report = tiny_run
    eq = report["equivalence"]
    assert eq["images"] == 8
    assert eq["image_max_abs_diff"] == 0 and eq["inception_max_abs_diff"] == 0 and eq["clip_max_abs_diff"] == 0
    assert abs(eq["fid_plain_vs_fast"]) < 1e-6
    assert "equivalence (plain vs fast, one-step)" in stdout


def test_budget_guard_marks_comparisons_not_measured_and_still_writes(tmp_path):
    run_tiny(tmp_path / "t.json", "--budget-s", "0", "--check-equivalence", "8")
    report = json.loads((tmp_path / "t.json").read_text())
    assert list(report["comparisons"]) == COMPARISONS and report["equivalence"] is None
    for row in report["comparisons"].values():
        assert "naive" not in row and "ours" not in row and "ratio" not in row
    assert report["table"].count("not measured (skipped: past --budget-s)") == 6
    assert "flops_per_image" in report["meta"]


def test_only_and_naive_cap(tmp_path):
    run_tiny(tmp_path / "t.json", "--only", "end_to_end_1step", "--n-onestep", "16", "--naive-max-images", "8",
             "--naive-batches", "8", "--ours-batches", "8", "--no-components")
    comparisons = json.loads((tmp_path / "t.json").read_text())["comparisons"]
    assert list(comparisons) == ["end_to_end_1step"]
    row = comparisons["end_to_end_1step"]
    assert row["naive"]["images"] == 8 and row["ours"]["images"] == 16
    assert "components_ms_per_image" not in row["ours"]


def test_unknown_comparison_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench.throughput", "--tiny", "--only", "generation",
                           "--out", str(tmp_path / "t.json")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown comparison generation" in done.stderr
    assert not (tmp_path / "t.json").exists()
