"""The released checkpoints' configurations (``tests/fixtures/published``, sources in its SOURCES.md), built with
random weights at reduced width and loaded the way a download is: from a Hugging Face cache, by hub id, offline.

Width is reduced (channels, heads, text width and depth) the same way in every model; everything else — layer
types, block layout, schedulers, prediction type, tokenizer settings, the keys a config does or does not carry —
is the published one. SD Turbo and SwiftBrush must merge (Figure 3's ends) although their UNet configs differ in
keys that change no computation.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.test_run import ROOT, STANDINS, run_bench, world  # noqa: F401  (world is a fixture)

FIXTURES = Path(__file__).parent / "fixtures" / "published"
HUB_IDS = {"sd21-base": "stabilityai/stable-diffusion-2-1-base", "sd-turbo": "stabilityai/sd-turbo",
           "swiftbrush": "thuanz123/swiftbrush"}
NARROW = {
    # 16x16 latents (128-px images): attention over 4,096 latent tokens made this test take minutes on a CPU
    "unet": {"block_out_channels": [32, 64, 128, 128], "attention_head_dim": [1, 2, 4, 4], "cross_attention_dim": 32,
             "sample_size": 16},
    "vae": {"block_out_channels": [32, 32, 64, 64]},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "projection_dim": 32},
}


def narrow(config: dict, part: str) -> dict:
    return {**config, **NARROW.get(part, {})}


def build_part(part: str, published: dict, folder: Path, seed: int) -> None:
    """A random-weight component of a published config, saved as the Hub has it: the published config file (width
    narrowed), the weights of a model built from it."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = {k: v for k, v in narrow(published, part).items() if not k.startswith("_")}
    if part == "unet":
        UNet2DConditionModel.from_config(config).save_pretrained(folder, safe_serialization=True)
    elif part == "vae":
        AutoencoderKL.from_config(config).save_pretrained(folder, safe_serialization=True)
    else:
        CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"})).save_pretrained(
            folder, safe_serialization=True)
    (folder / "config.json").write_text(json.dumps(narrow(published, part), indent=2, sort_keys=True))


def hub_snapshot(hub: Path, repo_id: str) -> Path:
    """The folder a download of ``repo_id`` lands in (``models--org--name/snapshots/<commit>``, refs/main)."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def build_release(name: str, target: Path, seed: int) -> Path:
    from bench.tokenizer import write_clip_tokenizer

    source = FIXTURES / name
    for path in source.rglob("*.json"):
        relative = path.relative_to(source)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / relative)
    staged = target.parent / f".{name}-weights"
    for part in ("unet", "vae", "text_encoder"):
        build_part(part, json.loads((source / part / "config.json").read_text()), staged / name / part, seed)
        for file in (staged / name / part).iterdir():
            shutil.copy(file, target / part / file.name)
    shutil.rmtree(staged)
    scratch = target.parent / f".{name}-tokenizer"
    write_clip_tokenizer(scratch)
    for file in ("vocab.json", "merges.txt"):
        shutil.copy(scratch / file, target / "tokenizer" / file)
    shutil.rmtree(scratch)
    return target


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    hub = root / "hub"
    for seed, (name, repo_id) in enumerate(HUB_IDS.items()):
        build_release(name, hub_snapshot(hub, repo_id), seed)
    sbv2 = root / "sbv2-release"  # the Google-Drive folder: unet_ema/ only, SD Turbo for the rest
    build_part("unet", json.loads((FIXTURES / "sbv2" / "unet_ema" / "config.json").read_text()), sbv2 / "unet_ema", 7)
    return {"hub": hub, "sbv2": sbv2, "root": root}


@pytest.mark.slow
def test_published_releases_load_by_hub_id_run_and_merge(hub, world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["hub"]))  # read by the subprocesses' huggingface_hub at import
    out = tmp_path / "table1"
    args = ["--models", f"sd21-cfg2,sdturbo,swiftbrush,sbv2={hub['sbv2']}", "--coco", str(world["coco"]), "--n", "4",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--grid", "0",
            *STANDINS]
    result = run_bench(args, cwd=tmp_path)
    table = pd.read_csv(out / "table.csv").set_index("model")
    assert table.index.tolist() == ["sd21-cfg2", "sdturbo", "swiftbrush", "sbv2"]
    assert (table["n_samples"] == 4).all() and table[["fid", "clip_score"]].notna().all().all()
    card = json.loads((out / "manifest.json").read_text())["protocol_card"]["models"]
    assert card["sd21-cfg2"]["sampler"] == "PNDMScheduler" and card["sd21-cfg2"]["steps"] == 25
    assert {card[m]["sampler"] for m in ("sdturbo", "swiftbrush", "sbv2")} == {"one step at t = 999"}
    assert "Loading weights" not in result.stderr

    # Figure 3's ends: SD Turbo (upcast_attention null) and SwiftBrush (no such key, i.e. false) merge.
    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "distill.merge", HUB_IDS["sd-turbo"], HUB_IDS["swiftbrush"], "--lam",
                           "0.5", "-o", str(merged), "--base", HUB_IDS["sd-turbo"]], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((merged / "merge.json").read_text())
    assert record["config"] == "A's" and record["lam"] == 0.5
    run_bench([*args[:1], f"merged={merged}", *args[2:]], cwd=tmp_path)
    assert "merged" in pd.read_csv(out / "table.csv")["model"].tolist()
