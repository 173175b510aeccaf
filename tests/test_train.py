"""End to end on tiny models (CPU): `python -m distill.train` in both schemes, exact resume, the output folder
in the bench loader, bad options, and `python -m distill.probe --tiny`."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from bench.load import encode_prompts, load_model
from bench.processes import free_port
from bench.registry import ModelSpec
from bench.sampling import alphas_cumprod, onestep_timestep, onestep_x0, sample_noise
from bench.testing import make_tiny_pipeline, make_tiny_taesd, write_tiny_open_clip
from distill import probe, train
from distill.utils import write_real_pairs

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-world")
    prompts = root / "prompts.txt"
    prompts.write_text("a red bus\na cat on a sofa\ntwo dogs\na red bus\nan empty street\na bowl of fruit\n")
    (root / "pairs").mkdir()
    torch.manual_seed(0)  # (noise, x0) pairs for DMD's regression loss: 3 of them, in the student's latent shape
    write_real_pairs(root / "pairs" / "part-0.safetensors", torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16) * 0.5,
                     ["a red bus", "two dogs", "a green field"])
    return SimpleNamespace(root=root, pipeline=make_tiny_pipeline(root / "pipeline"), prompts=prompts,
                           taesd=make_tiny_taesd(root / "taesd"), clip=write_tiny_open_clip(root / "clip"),
                           pairs=root / "pairs")


def _args(world, out, scheme, *extra) -> list[str]:
    return ["--prompts", str(world.prompts), "--teacher", str(world.pipeline), "--student-init", str(world.pipeline),
            "--scheme", scheme, "--out", str(out), "--batch-size", "2", "--max-steps", "2", "--device", "cpu",
            "--report-to", "none", "--sample-every", "0", "--checkpoint-every", "0", "--taesd", str(world.taesd),
            "--clip-model", world.clip, "--cache-dir", str(world.root / "cache"), "--ema-decay", "0.9",
            "--lr", "1e-4", *extra]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    for name in ("student.safetensors", "student_ema.safetensors", "fake.safetensors"):
        assert _same(load_file(a / name), load_file(b / name)), name
    optimizers = [torch.load(folder / "optimizers.pt", weights_only=True) for folder in (a, b)]
    assert _same(*optimizers)
    assert json.loads((a / "state.json").read_text()) == json.loads((b / "state.json").read_text())


def _one_step_image(out: Path) -> torch.Tensor:
    model = load_model(ModelSpec("student", str(out)))
    t = onestep_timestep(model.scheduler_config)
    abar = float(alphas_cumprod(model.scheduler_config)[t])
    with torch.no_grad():
        embeddings = encode_prompts(model.tokenizer, model.text_encoder, ["a red bus"])
        x0 = onestep_x0(model.unet, sample_noise(0, [0], model.latent_shape), embeddings, abar, t)
        return model.vae.decode(x0 / model.vae.config.scaling_factor).sample


def test_full_scheme_cli_exports_and_resumes_exactly(world, tmp_path):
    # Straight: 2 steps in a subprocess, with sample grids and TensorBoard on (they must not perturb training);
    # the DMD2 options and the real-data regression on, so that their state resumes exactly too.
    straight = tmp_path / "straight"
    dmd2 = ("--fake", "full", "--fake-updates", "2", "--normalize-grad", "--fake-cfg", "1", "--real-data",
            str(world.pairs), "--real-data-batch", "1")
    command = [sys.executable, "-m", "distill.train", *_args(world, straight, "full", *dmd2, "--sample-every", "1",
                                                               "--report-to", "tensorboard", "--num-samples", "2")]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["step"] == 2
    assert "loss/regression=" in run.stderr
    # Split: 1 step, stop with a checkpoint, resume the latest for the second.
    split = tmp_path / "split"
    train.main(_args(world, split, "full", *dmd2, "--stop-at", "1"))
    assert [p.name for p in (split / "checkpoints").iterdir()] == ["checkpoint-1"]
    assert not (split / "unet_ema").exists()
    train.main(_args(world, split, "full", *dmd2, "--resume", "latest"))
    _assert_same_checkpoint(straight / "checkpoints" / "checkpoint-2", split / "checkpoints" / "checkpoint-2")
    moved = load_file(split / "checkpoints" / "checkpoint-2" / "student.safetensors")
    before = load_file(split / "checkpoints" / "checkpoint-1" / "student.safetensors")
    assert any(not torch.equal(moved[k], before[k]) for k in moved)  # training did something

    # The layout: unet_ema/ + unet/ + bench_base.json, checkpoints with their config, samples, TensorBoard.
    saved = json.loads((straight / "checkpoints" / "checkpoint-2" / "config.json").read_text())
    assert saved["scheme"] == "full" and saved["lr"] == 1e-4
    assert json.loads((straight / "bench_base.json").read_text())["base"] == str(world.pipeline.resolve())
    assert (straight / "unet_ema" / "diffusion_pytorch_model.safetensors").exists()
    assert sorted(p.name for p in (straight / "samples").iterdir()) == ["step-0000000.png", "step-0000001.png",
                                                                       "step-0000002.png"]
    assert list((straight / "logs").rglob("events.out.tfevents.*"))
    ema = load_file(straight / "unet_ema" / "diffusion_pytorch_model.safetensors")
    shadow = load_file(straight / "checkpoints" / "checkpoint-2" / "student_ema.safetensors")
    assert all(torch.equal(ema[k], shadow[k]) for k in shadow)  # unet_ema/ holds the EMA weights
    image = _one_step_image(straight)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_lora_scheme_with_clip_loss_resumes_exactly_and_exports_fused(world, tmp_path):
    unet_only = world.pipeline / "unet"  # a bare UNet folder as the init: its base defaults to the teacher
    straight = tmp_path / "straight"
    summary = train.main(_args(world, straight, "lora", "--student-init", str(unet_only), "--student-rank", "4",
                               "--student-alpha", "8", "--fake-rank", "4", "--fake-alpha", "8"))
    assert summary["step"] == 2
    split = tmp_path / "split"
    common = ("--student-init", str(unet_only), "--student-rank", "4", "--student-alpha", "8", "--fake-rank", "4",
              "--fake-alpha", "8")
    train.main(_args(world, split, "lora", *common, "--stop-at", "1"))
    with pytest.raises(SystemExit) as code:  # a resume with other settings is refused
        train.main(_args(world, split, "lora", *common, "--resume", "latest", "--teacher-cfg", "2"))
    assert code.value.code == 2
    train.main(_args(world, split, "lora", *common, "--resume", "latest"))
    _assert_same_checkpoint(straight / "checkpoints" / "checkpoint-2", split / "checkpoints" / "checkpoint-2")
    lora = load_file(straight / "checkpoints" / "checkpoint-2" / "student.safetensors")
    assert lora and all("lora_" in k for k in lora)  # only the adapter trains
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)

    # Fused UNet folders and the raw PEFT adapter; the bench loads <out> and the adapter over its base alike.
    assert (straight / "unet_lora" / "adapter_config.json").exists()
    raw = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    ema = load_file(straight / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert not any("lora" in k for k in ema) and ema.keys() == raw.keys()
    shadow = load_file(straight / "checkpoints" / "checkpoint-2" / "student_ema.safetensors")
    assert shadow and all(torch.equal(ema[name], value) for name, value in shadow.items())  # the fused EMA
    image = _one_step_image(straight)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    via_adapter = load_model(ModelSpec("adapter", str(world.pipeline), unet=str(straight / "unet_lora")))
    assert all(torch.equal(v, raw[k]) for k, v in via_adapter.unet.state_dict().items())


def test_text_cache_off_encodes_per_batch_to_the_same_training(world, tmp_path):
    """--text-cache off (prompt sets too large for the disk cache) trains like the float32 cache, writing nothing."""
    cached, on_demand = tmp_path / "cached", tmp_path / "on-demand"
    train.main(_args(world, cached, "full", "--text-cache-dtype", "float32"))  # two steps: Adam's first is sign(g)
    train.main(_args(world, on_demand, "full", "--text-cache", "off", "--cache-dir", str(tmp_path / "unused-cache")))
    assert not (tmp_path / "unused-cache").exists()
    a, b = (load_file(out / "unet_ema" / "diffusion_pytorch_model.safetensors") for out in (cached, on_demand))
    start = load_file(world.pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # steps were taken...
    for key in a:  # ...and the same one, up to the text encoder's batch-size rounding
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (("--prompts", "missing.txt"), "--prompts 'missing.txt' does not exist"),
    (("--lr", "0"), "--lr and --fake-lr must be > 0"),
    (("--fake-warmup-steps", "5"), "--fake-warmup-steps must be below --max-steps"),
    (("--stop-at", "3"), "--stop-at must be in [1, --max-steps]"),
    (("--resume", "nowhere"), "no such checkpoint folder"),
    (("--teacher", "no-org/no-such-model"), "cannot load the teacher from 'no-org/no-such-model'"),
    (("--student-init", "no-org/no-such-model"), "pass --student-init with a local folder"),
])
def test_bad_options_are_one_line_errors_with_exit_2(world, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as code:
        train.main(_args(world, tmp_path / "out", "full", *extra))
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars of loads that worked
    assert err.startswith("distill.train: error:") and message in err


def test_dry_run_prints_resolved_scheme_defaults(world, tmp_path, capsys):
    train.main(["--prompts", str(world.prompts), "--scheme", "lora", "--out", str(tmp_path), "--dry-run"])
    config = json.loads(capsys.readouterr().out)
    assert config["lr"] == 1e-5 and config["clip_weight"] == 0.1 and config["fake_lr"] == 1e-3


def test_probe_tiny_prints_seconds_per_step(world, capsys):
    results = probe.main(["--tiny", "--steps", "2", "--batch-size", "1", "--pipeline", str(world.pipeline)])
    out = capsys.readouterr().out
    assert "full:" in out and "lora:" in out and "s/step" in out
    assert all(r["seconds_per_step"] > 0 for r in results)


def test_resume_refuses_other_data_or_settings_and_keeps_the_config(world, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(_args(world, out, "full", "--stop-at", "1"))
    config = (out / "train_config.json").read_text()
    edited = tmp_path / "prompts.txt"  # the same number of prompts, one of them changed
    edited.write_text(world.prompts.read_text().replace("two dogs", "three dogs"))
    for change, message in [(["--prompts", str(edited)], "the contents of --prompts / --real-data"),
                            (["--teacher-cfg", "2"], "teacher_cfg")]:
        with pytest.raises(SystemExit) as code:  # argparse: the last --prompts wins
            train.main(_args(world, out, "full", "--resume", "latest", *change))
        assert code.value.code == 2 and message in capsys.readouterr().err
        assert (out / "train_config.json").read_text() == config  # a refused resume leaves the config alone


def test_accelerate_settings_do_not_change_training(world, tmp_path, monkeypatch):
    """`accelerate config` / launch settings (bf16 autocast, gradient accumulation) must not reach our loop."""
    plain = tmp_path / "plain"
    train.main(_args(world, plain, "full", "--stop-at", "1"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    configured = tmp_path / "configured"
    train.main(_args(world, configured, "full", "--stop-at", "1"))
    _assert_same_checkpoint(plain / "checkpoints" / "checkpoint-1", configured / "checkpoints" / "checkpoint-1")


def test_each_optimizer_warms_up_from_its_own_first_update():
    assert [train.warm_up(k, 4) for k in (-2, 0, 1, 3, 10)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert train.warm_up(0, 0) == 1.0


def test_make_pairs_matches_the_pipeline_and_resumes(world, tmp_path, capsys):
    """distill.make_pairs: pair i is (noise i, the teacher pipeline's final latent from it, PNDM as the bench's teacher
    rows); shards resume."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline

    from distill import make_pairs
    from distill.utils import load_real_pairs

    out = tmp_path / "pairs"
    args = ["--teacher", str(world.pipeline), "--prompts", str(world.prompts), "--n", "5", "-o", str(out),
            "--steps", "3", "--cfg", "2", "--shard-size", "2", "--batch-size", "2", "--device", "cpu"]
    make_pairs.main(args)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == ["pairs-00000.safetensors", "pairs-00001.safetensors", "pairs-00002.safetensors"]
    noise, x0, prompts = load_real_pairs(out)
    unique = ["a red bus", "a cat on a sofa", "two dogs", "an empty street", "a bowl of fruit"]  # file deduplicated
    assert prompts == unique and noise.shape == x0.shape == (5, 4, 16, 16)
    assert torch.equal(noise, sample_noise(0, range(5), (4, 16, 16)))

    pipe = StableDiffusionPipeline.from_pretrained(world.pipeline, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # make_pairs must not follow the folder
    with pytest.raises(AssertionError):
        torch.testing.assert_close(x0[3:5], pipe(prompts[3:5], latents=noise[3:5], num_inference_steps=3,
                                                 guidance_scale=2.0, output_type="latent").images)
    # the teacher's sampler, as the bench's sd21 rows run it: PNDM as SD 2.1-base ships it (PLMS steps only)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    expected = pipe(prompts[3:5], latents=noise[3:5], num_inference_steps=3, guidance_scale=2.0,
                    output_type="latent").images
    torch.testing.assert_close(x0[3:5], expected, rtol=1e-4, atol=1e-5)

    # Killed after the first shard: the rerun writes only the missing ones, the same bytes.
    middle = (out / shards[1]).read_bytes()
    (out / shards[1]).unlink()
    kept = {name: (out / name).stat().st_mtime_ns for name in (shards[0], shards[2])}
    make_pairs.main(args)
    assert (out / shards[1]).read_bytes() == middle
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept

    other = list(args)
    other[other.index("--cfg") + 1] = "3"
    with pytest.raises(SystemExit) as code:  # other settings into the same folder: refused, nothing touched
        make_pairs.main(other)
    assert code.value.code == 2 and "other settings (cfg differ)" in capsys.readouterr().err
    assert (out / shards[1]).read_bytes() == middle

    missing = list(args)
    missing[missing.index("--teacher") + 1], missing[missing.index("-o") + 1] = "./nowhere", str(tmp_path / "new")
    with pytest.raises(SystemExit):  # a teacher that cannot load: one line, no folder left behind
        make_pairs.main(missing)
    assert "--teacher './nowhere' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["full", "lora"])
def test_two_processes_train_and_resume_exactly(world, tmp_path, scheme):
    """Two processes (accelerate's torchrun launcher, gloo on the CPU): DDP, per-process noise and RNG states in
    the checkpoints; two steps straight equal one step, a stop and a resume."""
    extra = ("--student-rank", "4", "--student-alpha", "8", "--fake-rank", "4", "--fake-alpha", "8") \
        if scheme == "lora" else ()

    def launch(out, *more):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--main_process_port", str(free_port()), "-m",
                   "distill.train", *_args(world, out, scheme, *extra, *more)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    launch(tmp_path / "straight")
    launch(tmp_path / "split", "--stop-at", "1")
    launch(tmp_path / "split", "--resume", "latest")
    straight, split = (tmp_path / name / "checkpoints" / "checkpoint-2" for name in ("straight", "split"))
    _assert_same_checkpoint(straight, split)
    assert sorted(p.name for p in straight.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert json.loads((straight / "state.json").read_text())["num_processes"] == 2
    image = _one_step_image(tmp_path / "straight")
    assert torch.isfinite(image).all()
