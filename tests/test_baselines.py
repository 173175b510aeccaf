"""Table 3's other baselines (SD 1.5, InstaFlow-0.9B, DMD2's SD 1.5 generator) and Table 4's HPS v2 suite, on tiny
models of the released classes; each sampler equals a hand computation of its published inference code."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from bench.errors import UserError
from bench.generate import Sampler
from bench.load import encode_prompts, load_model
from bench.registry import DMD2_SD15, MODELS, SD15, resolve
from bench.testing import make_tiny_pipeline
from tests.test_published import hub_snapshot
from tests.test_run import STANDINS, run_bench, world  # noqa: F401  (world is a fixture)

PROMPTS = ["a painting of a fox", "a photo of a lighthouse at dawn"]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sd1") / "sd15", seed=4, scheduler="PNDMScheduler", sd1=True)


def conditioning(model, prompts):
    return encode_prompts(model.tokenizer, model.text_encoder, prompts)


def test_sd15_pads_with_the_end_token_and_its_25_pndm_steps_equal_the_pipeline(sd1):
    from diffusers import StableDiffusionPipeline

    spec = resolve(f"sd15-cfg3={sd1}")
    assert (spec.kind, spec.steps, spec.guidance_scale, spec.scheduler) == ("multi-step", 25, 3.0, "PNDMScheduler")
    model = load_model(spec)
    assert model.tokenizer(["a fox"], padding="max_length", max_length=77).input_ids[0][-1] == 49407
    sampler = Sampler(model, seed=1)
    ours = sampler.latents(PROMPTS, [0, 1])
    assert len(sampler.scheduler.timesteps) == 26  # 25 steps, PLMS warm-up evaluates the second one twice
    pipe = StableDiffusionPipeline.from_pretrained(sd1, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPTS, latents=sampler.noise([0, 1]), num_inference_steps=25, guidance_scale=3.0,
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_instaflow_is_one_euler_step_of_its_velocity_from_t_1000(sd1):
    """gnobitab/InstaFlow code/pipeline_rf.py with num_inference_steps=1, guidance_scale=0: latents = z * s,
    t = 1000, v = unet(latents, t), x0 = latents + 1 * v (s = init_noise_sigma = 1 for PNDM)."""
    model = load_model(resolve(f"instaflow={sd1}"))
    sampler = Sampler(model, seed=2)
    z = sampler.noise([0, 1])
    cond = conditioning(model, PROMPTS)
    calls = []
    model.unet.register_forward_hook(lambda *_: calls.append(1))
    ours = sampler.latents(PROMPTS, [0, 1])
    assert len(calls) == 1  # no unconditional pass
    with torch.no_grad():
        hand = z + model.unet(z, torch.tensor([1000.0, 1000.0]), encoder_hidden_states=cond).sample
        at_999 = z + model.unet(z, torch.tensor([999, 999]), encoder_hidden_states=cond).sample
    torch.testing.assert_close(ours, hand)
    assert not torch.allclose(ours, at_999)  # the timestep is InstaFlow's 1000, not the one-step students' 999
    assert sampler.describe() == {"kind": "rectified-flow", "timestep": 1000, "init_sigma": 1.0}


def test_dmd2_loads_its_state_dict_file_and_uses_its_hard_coded_alpha(sd1, tmp_path):
    """tianweiy/DMD2 main/test_folder_sd.py: t = 999, x0 = (z - sqrt(1 - 0.0047) eps) / sqrt(0.0047), fp32; the
    release is a torch.save'd UNet state dict (DDP's "module." prefix dropped), read with weights_only=True."""
    from diffusers import UNet2DConditionModel

    generator = UNet2DConditionModel.from_pretrained(sd1, subfolder="unet")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)  # a "distilled" UNet, unlike the base's
    file = tmp_path / "pytorch_model.bin"
    torch.save({f"module.{k}": v for k, v in generator.state_dict().items()}, file)
    spec = resolve(f"dmd2-sd15={file}")
    assert (spec.source, spec.unet, spec.abar, spec.timestep) == (SD15, str(file), 0.0047, 999)
    spec = resolve(f"dmd2-sd15={file}", {"dmd2-sd15": MODELS["dmd2-sd15"].__class__(
        **{**MODELS["dmd2-sd15"].to_dict(), "source": str(sd1)})})
    model = load_model(spec)
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in generator.state_dict().items())
    sampler = Sampler(model, seed=3)
    z, cond = sampler.noise([0, 1]), conditioning(model, PROMPTS)
    with torch.no_grad():
        eps = generator(z, torch.tensor([999, 999]), encoder_hidden_states=cond).sample
    a = torch.full((2, 1, 1, 1), 0.0047)
    torch.testing.assert_close(sampler.latents(PROMPTS, [0, 1]), (z - (1 - a) ** 0.5 * eps) / a ** 0.5)
    assert MODELS["dmd2-sd15"].unet == DMD2_SD15 and DMD2_SD15.startswith("tianweiy/DMD2/")


def test_the_three_baselines_run_end_to_end_by_their_registry_names(sd1, world, tmp_path, monkeypatch):  # noqa: F811
    """``bench.run --models sd15-cfg3,instaflow,dmd2-sd15``: SD 1.5 and InstaFlow resolved by hub id from a Hugging
    Face cache, DMD2 as a state-dict file over SD 1.5."""
    hub = tmp_path / "hub"
    for repo_id in (SD15, MODELS["instaflow"].source):
        shutil.copytree(sd1, hub_snapshot(hub, repo_id), dirs_exist_ok=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    from diffusers import UNet2DConditionModel

    file = tmp_path / "dmd2.bin"
    torch.save(UNet2DConditionModel.from_pretrained(sd1, subfolder="unet").state_dict(), file)
    out = tmp_path / "baselines"
    run_bench(["--models", f"sd15-cfg3,instaflow,dmd2-sd15={file}", "--coco", str(world["coco"]), "--n", "4",
               "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--grid", "0",
               *STANDINS], cwd=tmp_path)
    table = pd.read_csv(out / "table.csv").set_index("model")
    assert table.index.tolist() == ["sd15-cfg3", "instaflow", "dmd2-sd15"] and (table["n_samples"] == 4).all()
    report = (tmp_path / "reports" / "baselines.md").read_text()
    assert "| sd15-cfg3 | 4 |" in report and "/ 8.78 /" in report and "/ 13.33 /" in report  # Table 3 beside


# --------------------------------------------------------------------------------------------------------- HPS v2

TINY_HPS = {"embed_dim": 16,
            "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
COUNTS = {"anime": 5, "concept-art": 3, "paintings": 4, "photo": 2}


@pytest.fixture()
def hps_world(tmp_path, monkeypatch):
    """A tiny open_clip architecture in ViT-H-14's place, its 'HPS checkpoint' as hpsv2 saves one, and prompt
    files of the benchmark's format."""
    import open_clip

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "ViT-H-14", TINY_HPS)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-H-14", pretrained=None)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    weights = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"iterations": 1, "name": "tiny", "state_dict": model.state_dict()}, weights)
    prompts = tmp_path / "benchmark"
    prompts.mkdir()
    for style, count in COUNTS.items():
        (prompts / f"{style}.json").write_text(json.dumps([f"a {style} picture of thing {i}" for i in range(count)]))
    return {"weights": weights, "prompts": prompts, "model": model.eval()}


def hpsv2_direct(model, images: np.ndarray, texts: list[str]) -> np.ndarray:
    """hpsv2's evaluation.py scoring, written out: preprocess_val per image (ToTensor, ResizeMaxSize(224) bicubic on
    the tensor with torchvision >= 0.17's antialias, zero pad, OpenAI Normalize), normalised features, 100 x the
    diagonal of image_features @ text_features.T."""
    import open_clip
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode, ToTensor

    tensors = []
    for image in images:
        x = ToTensor()(image)
        x = F.resize(x, [224, 224], InterpolationMode.BICUBIC, antialias=True)  # square: no padding
        tensors.append(F.normalize(x, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)))
    with torch.no_grad():
        image_features = torch.nn.functional.normalize(model.encode_image(torch.stack(tensors)), dim=-1)
        text_features = torch.nn.functional.normalize(
            model.encode_text(open_clip.get_tokenizer("ViT-H-14")(texts)), dim=-1)
    return (100 * (image_features * text_features).sum(-1)).double().numpy()


def test_hpsv2_suite_scores_as_the_hpsv2_package_does(world, hps_world, tmp_path, monkeypatch):  # noqa: F811
    from bench import run

    monkeypatch.chdir(tmp_path)
    run.main(["--suite", "hpsv2", "--models", f"one={world['one']}", "--hps-prompts", str(hps_world["prompts"]),
              "--hps-weights", str(hps_world["weights"]), "--out", str(tmp_path / "hps"), "--cache-dir",
              str(tmp_path / "cache"), "--batch-size", "4", "--grid", "0"])
    table = pd.read_csv(tmp_path / "hps" / "table.csv").set_index("model")
    styles = [style for style, count in COUNTS.items() for _ in range(count)]
    captions = [f"a {style} picture of thing {i}" for style, count in COUNTS.items() for i in range(count)]
    images, _ = Sampler(load_model(resolve(f"one={world['one']}")), seed=0)(captions, range(len(captions)))
    direct = hpsv2_direct(hps_world["model"], images, captions)
    for style in COUNTS:
        assert table.loc["one", style] == pytest.approx(direct[np.array(styles) == style].mean(), abs=1e-4)
    assert table.loc["one", "average"] == pytest.approx(direct.mean(), abs=1e-4)
    report = (tmp_path / "reports" / "hps.md").read_text()
    assert "| model | N | anime | concept-art | paintings | photo | average |" in report
    assert "HPS_v2_compressed.pt (v2.0)" in report


def test_the_80_prompt_chunks_of_a_style():
    from bench.metrics.hps import benchmark_scores

    scores = np.concatenate([np.full(80, 1.0), np.full(5, 3.0), np.full(2, 7.0)])
    styles = np.array(["a"] * 85 + ["b"] * 2)
    result = benchmark_scores(scores, styles)
    assert result["a"] == pytest.approx((1.0 + 3.0) / 2)  # two chunks: 80 prompts and 5, each mean weighs once
    assert result["b"] == 7.0 and result["average"] == pytest.approx(scores.mean())


@pytest.mark.parametrize("case", ["no-weights", "no-prompts", "missing-style"])
def test_hpsv2_missing_files_are_one_line_naming_the_option_and_the_source(hps_world, case, tmp_path,
                                                                             monkeypatch):
    from bench import suites
    from bench.suites import RunConfig

    monkeypatch.delenv("BENCH_WEIGHTS_DIR", raising=False)
    options = {"hps_prompts": str(hps_world["prompts"]), "hps_weights": str(hps_world["weights"])}
    if case == "no-weights":
        options["hps_weights"] = None
    elif case == "no-prompts":
        options["hps_prompts"] = None
    else:
        (hps_world["prompts"] / "photo.json").unlink()
    with pytest.raises(UserError) as error:
        suites.build(RunConfig(suite="hpsv2", **options))
    message = str(error.value)
    assert "\n" not in message
    if case == "no-weights":
        assert "--hps-weights" in message and "huggingface.co/xswu/HPSv2" in message
    else:
        assert "--hps-prompts" in message and "zhwang/HPDv2" in message
        assert case == "no-prompts" or "photo.json" in message
