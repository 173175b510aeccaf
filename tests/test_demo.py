"""The demo world (bench.demo): autoencoder, teacher folder, extractors, protocol, models and caching.

Tiny step counts throughout; the full world is never trained here.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bench.demo import world  # noqa: E402
from bench.demo.data import PROMPTS, digits_uint8, split  # noqa: E402
from bench.demo.teacher import TeacherConfig  # noqa: E402
from bench.errors import UserError  # noqa: E402

TINY_TEACHER = TeacherConfig(steps=3, batch_size=16, warmup=1)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from bench.tokenizer import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("demo") / "tokenizer"
    write_clip_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    from bench.demo.teacher import train_teacher

    return train_teacher(tmp_path_factory.mktemp("demo") / "teacher", tokenizer_dir, TINY_TEACHER, log=lambda m: None)


def test_pixel_autoencoder_is_exact_and_saves(tmp_path):
    from bench.demo.autoencoder import PixelAutoencoder

    vae = PixelAutoencoder()
    z = torch.randn(4, 1, 8, 8)
    image = vae.decode(z).sample
    assert image.shape == (4, 3, 8, 8)
    assert torch.equal(image, z.repeat(1, 3, 1, 1))
    assert torch.equal(vae.encode(image).latent_dist.mode(), z)
    assert torch.equal(vae.encode(image).latent_dist.sample(), z)
    assert torch.equal(vae.decode(z, return_dict=False)[0], image)

    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    loaded = PixelAutoencoder.from_pretrained(tmp_path / "vae")
    assert loaded.config.scaling_factor == 1.0 and list(loaded.config.block_out_channels) == [1]
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.decode(z).sample, image)


def test_teacher_folder_loads_component_by_component(teacher_dir):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from bench import sampling
    from bench.demo.autoencoder import PixelAutoencoder
    from bench.demo.teacher import encode_prompts

    index = json.loads((teacher_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["vae"] == ["bench.demo.autoencoder", "PixelAutoencoder"]
    unet = UNet2DConditionModel.from_pretrained(teacher_dir / "unet")
    text_encoder = CLIPTextModel.from_pretrained(teacher_dir / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(teacher_dir / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(teacher_dir / "scheduler")
    vae = PixelAutoencoder.from_pretrained(teacher_dir / "vae")
    assert (teacher_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert len(tokenizer) == 49408 and tokenizer.pad_token == "!" and tokenizer.model_max_length == 16
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.timestep_spacing == "leading"
    assert scheduler.config.steps_offset == 1 and not scheduler.config.set_alpha_to_one

    with torch.no_grad():
        cond = encode_prompts(tokenizer, text_encoder, list(PROMPTS[:2]))
        uncond = encode_prompts(tokenizer, text_encoder, ["", ""])
        assert cond.shape == (2, 16, text_encoder.config.hidden_size)
        noise = sampling.sample_noise(0, [0, 1], (1, 8, 8))
        abar = sampling.alphas_cumprod(scheduler.config)
        x0 = sampling.onestep_x0(unet, noise, cond, float(abar[999]), 999)
        multi = sampling.denoise(unet, scheduler, noise, cond, uncond, steps=3, guidance_scale=2.0)
    assert x0.shape == multi.shape == (2, 1, 8, 8)
    assert torch.isfinite(x0).all() and torch.isfinite(multi).all()
    assert vae.decode(multi).sample.shape == (2, 3, 8, 8)


def test_generate_and_diffusers_pipeline(teacher_dir):
    from diffusers import StableDiffusionPipeline

    from bench.demo.teacher import generate, load_components

    components = load_components(teacher_dir)
    one = generate(components, list(PROMPTS[:3]), seed=1, steps=1)
    multi = generate(components, list(PROMPTS[:3]), seed=1, steps=2, guidance_scale=2.0)
    assert one.shape == multi.shape == (3, 8, 8, 3) and one.dtype == np.uint8
    # sample i depends on (seed, i) only, not on the batch it is generated in
    assert np.array_equal(generate(components, list(PROMPTS[:3]), seed=1, steps=1, batch_size=1), one)

    # diffusers' own pipeline loads the folder and, from the same noise, makes the same images as ours.
    from bench.sampling import sample_noise

    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 1
    latents = sample_noise(1, range(3), (1, 8, 8))
    theirs = pipe(list(PROMPTS[:3]), height=8, width=8, num_inference_steps=2, guidance_scale=2.0, latents=latents,
                  output_type="np").images
    assert theirs.shape == (3, 8, 8, 3)
    assert np.abs(np.round(theirs * 255).astype(int) - multi).max() <= 1


def test_contrastive_separates_matched_from_shuffled_without_saturating(tmp_path, tokenizer):
    from bench.demo.extractors import ContrastiveConfig, DemoContrastiveExtractor, train_contrastive

    train, test = split()
    weights = train_contrastive(tmp_path / "contrastive.safetensors", tokenizer, ContrastiveConfig(), train)
    extractor = DemoContrastiveExtractor(weights, tokenizer=tokenizer)
    assert extractor.id.startswith("demo-contrastive:") and len(extractor.id.split("sha256=")[1]) == 64
    images, labels = digits_uint8()
    image_features = extractor.image_features(images[test])
    text_features = extractor.text_features(list(PROMPTS))
    assert image_features.dtype == np.float32 and image_features.shape[0] == len(test)
    cosines = image_features @ text_features.T
    matched = cosines[np.arange(len(test)), labels[test]]
    shuffled = cosines[np.arange(len(test)), (labels[test] + 1 + np.arange(len(test)) % 9) % 10]
    assert matched.mean() < 0.99, "the CLIP-score stand-in saturates"
    assert matched.mean() > shuffled.mean() + 0.4
    assert (cosines.argmax(1) == labels[test]).mean() > 0.9

    # the differentiable path the training losses use: float NCHW in [0, 1], RGB or gray
    x = torch.from_numpy(images[test[:4]]).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    score = (extractor.encode_image(x) * extractor.encode_text([PROMPTS[c] for c in labels[test[:4]]])).sum()
    score.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(extractor.encode_image(x[:, :1]), extractor.encode_image(x), atol=1e-6)
    assert extractor.text_features(["any prompt at all!"]).shape == (1, image_features.shape[1])


def test_classifier_is_accurate_on_held_out_digits(tmp_path):
    from bench.demo.extractors import ClassifierConfig, DemoClassifierExtractor, train_classifier

    train, test = split()
    weights = train_classifier(tmp_path / "classifier.safetensors", replace(ClassifierConfig(), steps=300), train)
    extractor = DemoClassifierExtractor(weights)
    images, labels = digits_uint8()
    assert (extractor.predict(images[test]) == labels[test]).mean() > 0.95
    features = extractor.image_features(images[:10])
    assert features.shape == (10, 128) and features.dtype == np.float32
    assert extractor.id.startswith("demo-classifier:")


def test_protocol_and_models():
    from bench.demo.models import demo_models
    from bench.demo.protocol import demo_protocol

    protocol = demo_protocol(samples_per_prompt=3)
    assert len(protocol.captions) == 30 and protocol.captions[:11] == PROMPTS + PROMPTS[:1]
    assert protocol.metric_resolution == 8 and protocol.clip_prefix == ""
    reference = np.concatenate(list(protocol.reference.load_batches(500)))
    assert reference.shape == (1797, 8, 8, 3) and reference.dtype == np.uint8
    assert protocol.reference.count == 1797 and len(protocol.reference.identity) == 64
    assert protocol.to_metric_images(reference[:5]) is not None
    assert np.array_equal(protocol.to_metric_images(reference[:5]), reference[:5])
    big = np.repeat(np.repeat(reference[:2], 4, axis=1), 4, axis=2)
    assert protocol.to_metric_images(big).shape == (2, 8, 8, 3)
    assert protocol.hash() == demo_protocol(samples_per_prompt=3).hash() != demo_protocol().hash()

    models = demo_models("some/root")
    assert set(models) == {"demo-teacher-cfg1", "demo-teacher-cfg2", "demo-teacher-cfg4.5", "demo-onestep-init",
                           "demo-turbo"}
    assert models["demo-teacher-cfg4.5"].guidance_scale == 4.5 and models["demo-teacher-cfg2"].steps == 25
    assert models["demo-onestep-init"].source == models["demo-teacher-cfg1"].source
    assert all(spec.dtype == "float32" for spec in models.values())


def test_extractors_are_registered():
    import bench.demo  # noqa: F401
    from bench.features import EXTRACTORS

    assert {"demo-classifier", "demo-contrastive", "demo-contrastive-loss"} <= set(EXTRACTORS)
    import importlib

    importlib.reload(bench.demo)  # a second registration is a no-op, not an error


def _tiny_settings(monkeypatch):
    from bench.demo.extractors import ClassifierConfig, ContrastiveConfig
    from bench.demo.regression import RegressionConfig

    monkeypatch.setattr(world, "teacher_config", lambda quick=False: TINY_TEACHER)
    monkeypatch.setattr(world, "regression_config",
                        lambda quick=False: RegressionConfig(pairs=8, sample_steps=2, steps=2, batch_size=4))
    monkeypatch.setattr(world, "classifier_config", lambda quick=False: ClassifierConfig(steps=2))
    monkeypatch.setattr(world, "contrastive_config",
                        lambda quick=False, loss=False: ContrastiveConfig(steps=2, seed=2 if loss else 1))


def _forbid_training(monkeypatch):
    import bench.demo.extractors as extractors
    import bench.demo.regression as regression
    import bench.demo.teacher as teacher
    import bench.tokenizer as tokenizer

    def fail(*args, **kwargs):
        raise AssertionError("the cached world was trained again")

    for module, name in ((teacher, "train_teacher"), (regression, "train_regression"),
                         (extractors, "train_classifier"), (extractors, "train_contrastive"),
                         (tokenizer, "write_clip_tokenizer")):
        monkeypatch.setattr(module, name, fail)


def test_ensure_world_caches_and_refuses_other_settings(tmp_path, tokenizer_dir, monkeypatch, capsys):
    import shutil

    root = tmp_path / "demo"
    root.mkdir()
    shutil.copytree(tokenizer_dir, root / "tokenizer")  # saves writing the tokenizer again
    _tiny_settings(monkeypatch)
    first = world.ensure_world(root)
    assert "demo world ready" in capsys.readouterr().err
    assert first == world.world_paths(root)
    for path in (first.classifier, first.contrastive, first.contrastive_loss):
        assert path.is_file()
    for folder in (first.teacher, first.turbo):
        assert (folder / "model_index.json").exists() and (folder / "unet" / "config.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary folders were left behind"
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    with monkeypatch.context() as m:
        _forbid_training(m)
        assert world.ensure_world(root) == first
    assert "ready" not in capsys.readouterr().err  # a run that found everything says nothing
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes

    monkeypatch.setattr(world, "teacher_config", lambda quick=False: replace(TINY_TEACHER, steps=4))
    with pytest.raises(UserError, match="other settings"):
        world.ensure_world(root)

    # extractors built through the registry from the world's root reuse its weights
    from bench.demo import demo_classifier, demo_contrastive_loss

    assert demo_classifier(root=str(root)).weights == first.classifier
    assert demo_contrastive_loss(root=str(root)).weights == first.contrastive_loss


def test_two_process_teacher_makes_the_updates_of_one(tmp_path, tokenizer_dir, teacher_dir):
    """Each process takes its half of the same batch and the gradients are averaged: the weights of one process
    up to float rounding. The token rows no prompt uses keep their initial values (they never reach an output)."""
    from safetensors.torch import load_file

    from bench.demo.teacher import build_text_encoder, train_teacher

    two = train_teacher(tmp_path / "two", tokenizer_dir, TINY_TEACHER, processes=2)  # log: picklable
    assert json.loads((two / "bench_demo.json").read_text())["processes"] == 2
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        one, other = load_file(teacher_dir / part), load_file(two / part)
        assert one.keys() == other.keys()
        diff = torch.cat([(other[key] - one[key]).abs().flatten() for key in one])
        # Adam turns a rounding-level change of a near-zero gradient into a visible step, so a few weights (0.02%
        # measured) move by up to 1e-4; halves trained without the all-reduce would differ almost everywhere.
        assert (diff > 1e-6).float().mean() < 1e-3, part
        assert diff.max() < 1e-3, part

    table = load_file(two / "text_encoder/model.safetensors")["embeddings.token_embedding.weight"]
    initial = build_text_encoder(TINY_TEACHER).get_input_embeddings().weight.detach()
    from transformers import CLIPTokenizer

    from bench.demo.data import EMPTY_PROMPT
    from bench.demo.teacher import tokenize

    used = torch.unique(tokenize(CLIPTokenizer.from_pretrained(tokenizer_dir), list(PROMPTS) + [EMPTY_PROMPT]))
    unused = torch.ones(len(table), dtype=torch.bool)
    unused[used] = False
    assert torch.equal(table[unused], initial[unused])
    assert not torch.equal(table[used], initial[used])  # the rows the prompts use were trained
    with pytest.raises(ValueError, match="does not split"):
        train_teacher(tmp_path / "odd", tokenizer_dir, replace(TINY_TEACHER, batch_size=15), processes=2)


def test_pairs_made_by_two_processes_are_those_of_one(teacher_dir):
    """Each process makes a contiguous share; a pair depends on its index only (its noise and class)."""
    from bench.demo.regression import RegressionConfig, make_pairs

    config = RegressionConfig(pairs=10, sample_steps=2)
    one = make_pairs(teacher_dir, config, log=lambda message: None)
    two = make_pairs(teacher_dir, config, processes=2)
    assert one["targets"].shape == two["targets"].shape == (10, 1, 8, 8) and two["processes"] == 2
    torch.testing.assert_close(two["targets"], one["targets"], rtol=0, atol=1e-5)
    assert not torch.allclose(one["targets"][:5], one["targets"][5:])

    first = make_pairs(teacher_dir, config, processes=2, indices=range(6))
    rest = make_pairs(teacher_dir, config, indices=range(6, 10), log=lambda message: None)
    torch.testing.assert_close(torch.cat([first["targets"], rest["targets"]]), one["targets"], rtol=0, atol=1e-5)


def test_regression_makes_the_pairs_it_is_not_given(teacher_dir, tmp_path):
    """demo-turbo trained on the first pairs from two processes and the rest made here equals one trained on all
    pairs made here; the marker records both parts."""
    from safetensors.torch import load_file

    from bench.demo.regression import RegressionConfig, make_pairs, train_regression
    from bench.demo.teacher import MARKER

    config = RegressionConfig(pairs=8, sample_steps=2, steps=2, batch_size=4)
    quiet = lambda message: None  # noqa: E731
    whole = train_regression(teacher_dir, tmp_path / "whole", config, log=quiet)
    first = make_pairs(teacher_dir, config, processes=2, indices=range(4))
    split = train_regression(teacher_dir, tmp_path / "split", config, log=quiet, pairs=first)
    marker = json.loads((split / MARKER).read_text())
    assert marker["pair_processes"] == [2, 1] and len(marker["pair_seconds"]) == 2
    assert json.loads((whole / MARKER).read_text())["pair_processes"] == [1]
    a, b = (load_file(folder / "unet" / "diffusion_pytorch_model.safetensors") for folder in (whole, split))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
