"""README's main command on the reduced world: ``bench.run --suite demo --quick`` trains the quick world and
students once, and the teacher's rows show the guidance trade-off through the real engine, store and metrics."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from bench.errors import UserError  # noqa: E402

QUICK_RUN = ["--suite", "demo", "--quick", "--models", "demo-teacher-cfg1,demo-teacher-cfg4.5", "--n", "600",
             "--batch-size", "100", "--grid", "4"]


@pytest.mark.slow
def test_quick_suite_shows_the_cfg_trade_off_and_reuses_its_cache(tmp_path, monkeypatch):
    import pandas as pd
    import torch

    from bench import run
    from bench.demo import world

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        run.main(QUICK_RUN)
    finally:
        torch.set_num_threads(threads)  # the demo suite drops to one thread on a CPU
    table = pd.read_csv("results/demo-quick/table.csv").set_index("model")
    cfg1, cfg45 = table.loc["demo-teacher-cfg1"], table.loc["demo-teacher-cfg4.5"]
    assert cfg1.n_samples == cfg45.n_samples == 600
    # More guidance: less diversity, more alignment; the CLIP stand-in is not saturated.
    assert cfg45.recall < cfg1.recall - 0.05
    assert cfg45.clip_score > cfg1.clip_score + 0.01
    assert cfg1.clip_score < 0.99
    report = (tmp_path / "reports" / "demo-quick.md").read_text()
    assert "| demo-teacher-cfg4.5 | 600 |" in report and "| model | N | fid | fid_inf | precision |" in report

    # A second run trains and generates nothing: every file of the world and the stores is left as it was.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*")
              if p.is_file() and p.name not in ("table.csv", "manifest.json", "metrics.json")
              and p.suffix != ".npy"}  # the per-sample metric arrays are rewritten with the metrics
    try:
        run.main(QUICK_RUN)
    finally:
        torch.set_num_threads(threads)
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
    assert pd.read_csv("results/demo-quick/table.csv").set_index("model").fid.to_dict() == table.fid.to_dict()

    with pytest.raises(UserError, match="other settings"):
        world.ensure_world("results/demo-quick/world", quick=False)
