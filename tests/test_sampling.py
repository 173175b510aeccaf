"""Sampling as the published pipelines do it: the teacher loops against diffusers' StableDiffusionPipeline, the
one-step x0 of every prediction type, zero-SNR schedules, and stochastic schedulers independent of batch size."""

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench.generate import Sampler
from bench.load import load_model
from bench.registry import MODELS, ModelSpec
from bench.sampling import alphas_cumprod, sample_noise, x0_from_prediction
from bench.testing import make_tiny_pipeline

PROMPTS = ["a red bus on a bridge", "two cats", "a bowl of fruit", "an empty street at night"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sampling") / "pipe", seed=3)


def with_scheduler(source, target, **changes):
    """A copy of a pipeline folder whose scheduler config says ``changes`` (class name as ``_class_name``)."""
    shutil.copytree(source, target)
    path = target / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    if "_class_name" in changes:
        index = json.loads((target / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", changes["_class_name"]]
        (target / "model_index.json").write_text(json.dumps(index))
    return target


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "DDIMScheduler"])
def test_teacher_loops_equal_stable_diffusion_pipeline(pipeline_dir, tmp_path, scheduler):
    import diffusers
    from diffusers import StableDiffusionPipeline

    shipped = {"_class_name": scheduler, **({"skip_prk_steps": True} if scheduler == "PNDMScheduler" else {})}
    folder = with_scheduler(pipeline_dir, tmp_path / "teacher", **shipped)  # as SD 2.1-base ships it
    spec = ModelSpec("teacher", str(folder), kind="multi-step", steps=4, guidance_scale=4.5, scheduler=scheduler)
    sampler = Sampler(load_model(spec), seed=7)
    ours = sampler.latents(PROMPTS[:2], [0, 1])
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert type(pipe.scheduler) is getattr(diffusers, scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPTS[:2], latents=sampler.noise([0, 1]), num_inference_steps=4, guidance_scale=4.5,
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    if scheduler == "PNDMScheduler":  # PLMS warm-up: 4 steps are 5 UNet calls, the pipeline's and ours
        assert len(sampler.scheduler.timesteps) == 5
        over_ddim = Sampler(load_model(dataclasses.replace(spec, source=str(pipeline_dir))))  # a DDIM folder
        assert over_ddim.scheduler.config.skip_prk_steps


def test_the_teacher_rows_pin_their_sampler_by_name():
    assert {MODELS[f"sd21-cfg{c}"].scheduler for c in ("2", "4.5", "7.5")} == {"PNDMScheduler"}
    assert {MODELS[f"sd21-cfg{c}-ddim"].scheduler for c in ("2", "4.5", "7.5")} == {"DDIMScheduler"}
    assert all(MODELS[f"sd21-cfg{c}"].steps == 25 for c in ("2", "4.5", "7.5"))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_one_step_x0_of_every_prediction_type_equals_the_hand_computation(pipeline_dir, tmp_path, prediction_type):
    folder = with_scheduler(pipeline_dir, tmp_path / "m", prediction_type=prediction_type)
    model = load_model(ModelSpec("m", str(folder)))
    sampler = Sampler(model, seed=2)
    noise = sampler.noise([0, 1])
    cond = model.text_encoder(model.tokenizer(PROMPTS[:2], padding="max_length", max_length=77,
                                              return_tensors="pt").input_ids)[0]
    out = model.unet(noise, torch.full((2,), 999), encoder_hidden_states=cond).sample.double()
    abar = float(alphas_cumprod(model.scheduler_config)[999])
    z = noise.double()
    expected = {"epsilon": (z - np.sqrt(1 - abar) * out) / np.sqrt(abar),
                "v_prediction": np.sqrt(abar) * z - np.sqrt(1 - abar) * out, "sample": out}[prediction_type]
    torch.testing.assert_close(sampler.latents(PROMPTS[:2], [0, 1]).double(), expected, rtol=1e-5, atol=1e-4)
    assert sampler.describe()["prediction_type"] == prediction_type


def test_zero_snr_schedules_are_exact_or_refused(pipeline_dir, tmp_path):
    abar = alphas_cumprod({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                           "rescale_betas_zero_snr": True})
    assert abar[-1] == 0 and abar[0] > 0.99  # the rescale is applied: no x0 from eps at t = 999
    eps = with_scheduler(pipeline_dir, tmp_path / "eps", rescale_betas_zero_snr=True)
    with pytest.raises(UserError, match="zero terminal SNR"):
        Sampler(load_model(ModelSpec("eps", str(eps))))
    v = with_scheduler(pipeline_dir, tmp_path / "v", rescale_betas_zero_snr=True, prediction_type="v_prediction")
    z, prediction = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(x0_from_prediction(z, prediction, 0.0, "v_prediction"), -prediction)  # x0 = -v at abar = 0
    assert Sampler(load_model(ModelSpec("v", str(v)))).describe()["abar"] == 0


@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_stochastic_schedulers_give_the_same_images_at_batch_sizes_1_and_7(pipeline_dir, tmp_path, scheduler):
    folder = with_scheduler(pipeline_dir, tmp_path / "s", _class_name=scheduler)
    spec = ModelSpec("s", str(folder), kind="multi-step", steps=3, guidance_scale=2.0)
    sampler = Sampler(load_model(spec), seed=5)
    prompts = [PROMPTS[i % 4] for i in range(7)]
    torch.manual_seed(0)  # the global RNG must not matter: each sample's step noise has its own generator
    singles = np.concatenate([sampler([prompts[i]], [i])[0] for i in range(7)])
    torch.manual_seed(123)
    together = sampler(prompts, list(range(7)))[0]
    difference = np.abs(singles.astype(int) - together)
    assert difference.max() <= 1 and (difference > 0).mean() < 2e-3  # BLAS rounding only
    assert not np.array_equal(sampler(prompts[:1], [0])[0], Sampler(load_model(spec), seed=6)(prompts[:1], [0])[0])


def test_a_scheduler_that_draws_noise_without_a_generator_is_refused(pipeline_dir, tmp_path, monkeypatch):
    import diffusers

    class NoisyScheduler(diffusers.DDIMScheduler):
        def step(self, model_output, timestep, sample, return_dict=True):
            return (sample + torch.randn(sample.shape),)

    monkeypatch.setattr(diffusers, "NoisyScheduler", NoisyScheduler, raising=False)
    folder = with_scheduler(pipeline_dir, tmp_path / "n", _class_name="NoisyScheduler")
    with pytest.raises(UserError, match="draws noise without a generator"):
        Sampler(load_model(ModelSpec("n", str(folder), kind="multi-step", steps=2)))


def test_noise_of_stochastic_steps_is_apart_from_the_starting_noise():
    from bench.sampling import step_generators

    start = sample_noise(0, [3], (4,))
    step = torch.randn(4, generator=step_generators(0, [3])[0])
    assert not torch.equal(start[0], step)
    assert torch.equal(step, torch.randn(4, generator=step_generators(0, [3])[0]))


def test_caption_cache_encodes_each_caption_once_and_matches_the_encoder(pipeline_dir, monkeypatch):
    from bench import generate
    from bench.load import encode_prompts

    model = load_model(ModelSpec("m", str(pipeline_dir)))
    sampler, encoded = Sampler(model), []
    monkeypatch.setattr(generate, "encode_prompts", lambda tok, enc, texts: encoded.append(list(texts))
                        or encode_prompts(tok, enc, texts))
    monkeypatch.setattr(generate, "CACHED_CAPTIONS", 3)
    first = sampler.encode([PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert encoded == [[PROMPTS[0], PROMPTS[1]]]  # a repeated caption is encoded once
    assert torch.equal(first, encode_prompts(model.tokenizer, model.text_encoder, [PROMPTS[0], PROMPTS[1],
                                                                                   PROMPTS[0]]))
    sampler.encode([PROMPTS[1], PROMPTS[2]])
    sampler.encode([PROMPTS[3]])  # four captions, three kept: the least recently used (PROMPTS[0]) goes
    assert encoded[1:] == [[PROMPTS[2]], [PROMPTS[3]]]
    sampler.encode([PROMPTS[0], PROMPTS[3]])
    assert encoded[-1] == [PROMPTS[0]]


def test_a_failed_compile_falls_back_to_eager_with_one_warning(pipeline_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    model = load_model(ModelSpec("m", str(pipeline_dir)))
    eager = Sampler(model, seed=1)(PROMPTS[:2], [0, 1])[0]
    compiled = Sampler(model, seed=1, compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = compiled(PROMPTS[:2], [0, 1])[0]
        again = compiled(PROMPTS[:2], [0, 1])[0]  # later calls go straight to eager, without warning again
    assert np.array_equal(images, eager) and np.array_equal(again, eager)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "torch.compile of the UNet failed (RuntimeError: inductor" in messages[0]
    assert "torch.compile of the VAE decoder failed" in messages[1] and "running it eagerly" in messages[1]


def test_compile_is_on_by_default_on_a_gpu_only():
    from bench.engine import with_device_defaults
    from bench.suites import RunConfig

    assert with_device_defaults(RunConfig(), "cuda:1").compile is True
    assert with_device_defaults(RunConfig(), "cpu").compile is False
    assert with_device_defaults(RunConfig(compile=False), "cuda").compile is False
