"""distill's pure parts: VSD and fake-teacher losses, clamped CLIP loss, merging, prompts, data order."""

import copy
import json
import os

import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench.interpolate import merge_state_dicts, merge_unets
from bench.sampling import alphas_cumprod, onestep_x0, x0_from_eps
from bench.testing import SD_SCHEDULER, make_tiny_taesd, tiny_unet, write_tiny_open_clip
from distill import utils
from distill.clip_loss import ClampedClipLoss, clip_preprocess, clip_weight, decode_to_unit, load_clip_encoder
from distill.merge import main as merge_main
from distill.prompts import load_prompts
from distill.vsd import add_noise, fake_loss, guided_eps, vsd_gradient, vsd_loss

os.environ["HF_HUB_OFFLINE"] = "1"
SCHEDULE = alphas_cumprod(SD_SCHEDULER)


pytestmark = pytest.mark.usefixtures("one_thread")


def _constant(eps):
    return lambda x_t, t, embeddings: eps


# ------------------------------------------------------------------------------------------------ VSD


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vsd_gradient_on_x0_is_sigma_squared_eps_difference_over_numel(dtype):
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, dtype=dtype, requires_grad=True)
    eps_real, eps_fake = torch.randn(3, 4, 5, 5, dtype=dtype), torch.randn(3, 4, 5, 5, dtype=dtype)
    t = torch.tensor([20, 500, 980])
    cond, uncond = torch.randn(3, 7, 8), torch.randn(1, 7, 8)
    loss, logs = vsd_loss(x0, _constant(eps_real), _constant(eps_fake), cond, uncond, SCHEDULE, teacher_cfg=1.0,
                          t=t, noise=torch.randn(3, 4, 5, 5, dtype=dtype))
    loss.backward()
    weight = (1 - SCHEDULE[t]).to(dtype).view(3, 1, 1, 1)  # w(t) = sigma_t^2 = 1 - abar_t
    g = weight * (eps_real - eps_fake)
    # Mean reduction: d(0.5 * mean((x0 - sg(x0 - g))^2)) / dx0 = g / numel, element by element, up to the
    # rounding of x0 - (x0 - g): one ulp of x0 per element, divided by numel.
    ulp = torch.finfo(dtype).eps * x0.detach().abs().max() / x0.numel()
    torch.testing.assert_close(x0.grad, g / x0.numel(), rtol=0, atol=float(ulp))
    torch.testing.assert_close(loss, 0.5 * (g ** 2).mean())
    assert logs["g_norm"] == pytest.approx(g.flatten(1).norm(dim=1).mean().item(), rel=1e-5)


def test_vsd_loss_batches_cfg_uncond_first_and_uses_teacher_cfg_for_fake_by_default():
    calls = []

    def eps_fn(x_t, t, embeddings):  # eps = the embeddings' mean, so cond/uncond are told apart
        calls.append((x_t.shape[0], embeddings.clone()))
        return embeddings.mean(dim=(1, 2)).view(-1, 1, 1, 1).expand_as(x_t)

    cond, uncond = torch.full((2, 3, 4), 2.0), torch.full((1, 3, 4), 0.5)
    x_t, t = torch.zeros(2, 1, 2, 2), torch.tensor([5, 6])
    eps = guided_eps(eps_fn, x_t, t, cond, uncond, 4.5)
    assert calls[0][0] == 4 and torch.equal(calls[0][1][:2], uncond.expand(2, 3, 4))  # one forward, uncond first
    torch.testing.assert_close(eps, torch.full_like(x_t, 0.5 + 4.5 * (2.0 - 0.5)))
    assert torch.equal(guided_eps(eps_fn, x_t, t, cond, uncond, 1.0), torch.full_like(x_t, 2.0))  # cond only

    calls.clear()
    vsd_loss(torch.zeros(2, 1, 2, 2), eps_fn, eps_fn, cond, uncond, SCHEDULE, teacher_cfg=3.0)
    assert [n for n, _ in calls] == [4, 4]  # fake_cfg=None -> the teacher's cfg on both (SwiftBrush)
    calls.clear()
    vsd_loss(torch.zeros(2, 1, 2, 2), eps_fn, eps_fn, cond, uncond, SCHEDULE, teacher_cfg=3.0, fake_cfg=1.0)
    assert [n for n, _ in calls] == [4, 2]  # DMD2: conditional fake


def test_dmd2_normalised_gradient_in_x0_space():
    torch.manual_seed(1)
    x0, x_t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    eps_real, eps_fake, abar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), SCHEDULE[torch.tensor([100, 900])]
    x0_real, x0_fake = x0_from_eps(x_t, eps_real, abar), x0_from_eps(x_t, eps_fake, abar)
    expected = (x0_fake - x0_real) / (x0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(vsd_gradient(x0, x_t, eps_real, eps_fake, abar, normalize=True), expected)
    nan = vsd_gradient(x0, x_t, eps_real * float("nan"), eps_fake, abar)
    assert torch.isfinite(nan).all()  # nan_to_num, as SwiftBrush


def test_add_noise_matches_ddpm_scheduler():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"})
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 400, 999])
    torch.testing.assert_close(add_noise(x0, noise, SCHEDULE[t]), scheduler.add_noise(x0, noise, t))


def test_fake_loss_is_plain_eps_mse_on_detached_samples():
    torch.manual_seed(2)
    student = torch.nn.Parameter(torch.randn(2, 4, 6, 6))
    fake = torch.nn.Conv2d(4, 4, 3, padding=1)
    seen = {}

    def fake_eps(x_t, t, embeddings):
        seen["embeddings"] = embeddings
        return fake(x_t) + embeddings.mean()

    cond, uncond = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    t, noise, drop = torch.tensor([0, 999]), torch.randn(2, 4, 6, 6), torch.tensor([True, False])
    loss = fake_loss(fake_eps, student * 2, cond, uncond, SCHEDULE, t=t, noise=noise, drop=drop)
    loss.backward()
    assert student.grad is None  # nothing reaches the student
    assert fake.weight.grad is not None and fake.weight.grad.abs().sum() > 0
    assert torch.equal(seen["embeddings"][0], uncond[0]) and torch.equal(seen["embeddings"][1], cond[1])
    x_t = add_noise((student * 2).detach(), noise, SCHEDULE[t])
    expected = ((fake(x_t) + seen["embeddings"].mean() - noise) ** 2).mean()
    torch.testing.assert_close(loss, expected)


# ------------------------------------------------------------------------------------------- CLIP loss


@pytest.fixture(scope="module")
def clip_parts(tmp_path_factory):
    from diffusers import AutoencoderTiny

    root = tmp_path_factory.mktemp("clip")
    taesd = AutoencoderTiny.from_pretrained(make_tiny_taesd(root / "taesd")).requires_grad_(False)
    encoder = load_clip_encoder(write_tiny_open_clip(root / "clip"))
    return taesd, encoder


def test_clip_loss_gradient_reaches_student_through_taesd_and_clip(clip_parts):
    taesd, encoder = clip_parts
    student = tiny_unet(3)
    torch.manual_seed(0)
    noise, cond = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    x0 = onestep_x0(student, noise, cond, float(SCHEDULE[999]), 999)
    text = encoder.encode_text(["a red bus", "two cats"])
    loss, logs = ClampedClipLoss(taesd, encoder.encode_image, tau=0.35)(x0, text)
    assert loss.item() > 0 and logs["active"] > 0
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in encoder.parameters()) and all(p.grad is None for p in taesd.parameters())


def test_clip_loss_is_zero_with_zero_gradient_above_tau(clip_parts):
    taesd, encoder = clip_parts
    x0 = torch.randn(2, 4, 16, 16, requires_grad=True)
    with torch.no_grad():  # text embeddings equal to the image's own: cosine 1 > tau
        text = encoder.encode_image(decode_to_unit(taesd, x0))
    loss, logs = ClampedClipLoss(taesd, encoder.encode_image, tau=0.35)(x0, text)
    loss.backward()
    assert loss.item() == 0.0 and logs["active"] == 0.0
    assert torch.count_nonzero(x0.grad) == 0


def test_clip_loss_is_pluggable_with_any_image_encoder_and_pixel_decoder():
    demo = pytest.importorskip("bench.demo.autoencoder")
    decoder = demo.PixelAutoencoder()
    tower = torch.nn.Linear(3 * 8 * 8, 6)
    x0 = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss, _ = ClampedClipLoss(decoder, lambda images: tower(images.flatten(1)), tau=2.0)(x0, torch.randn(2, 6))
    loss.backward()
    assert loss.item() > 0 and x0.grad.abs().sum() > 0
    torch.testing.assert_close(decode_to_unit(decoder, x0), ((x0 + 1) / 2).expand(-1, 3, -1, -1))


def test_clip_preprocess_resizes_short_side_and_normalises_differentiably():
    images = torch.rand(2, 3, 32, 48, requires_grad=True)
    out = clip_preprocess(images, 24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert out.shape == (2, 3, 24, 24)
    out.sum().backward()
    assert images.grad.abs().sum() > 0
    flat = torch.full((1, 3, 24, 24), 0.75)
    torch.testing.assert_close(clip_preprocess(flat, 24, (0.5,) * 3, (0.25,) * 3), torch.ones(1, 3, 24, 24))


def test_clip_weight_schedule_start_middle_end():
    assert clip_weight(0, 101) == pytest.approx(0.1)
    assert clip_weight(50, 101) == pytest.approx(0.05)
    assert clip_weight(100, 101) == pytest.approx(0.0)
    assert clip_weight(0, 101, schedule="cosine") == pytest.approx(0.1)
    assert clip_weight(50, 101, schedule="cosine") == pytest.approx(0.05)
    assert clip_weight(25, 101, schedule="cosine") > clip_weight(25, 101)  # cosine stays high longer
    assert clip_weight(100, 101, schedule="cosine") == pytest.approx(0.0, abs=1e-12)


def test_clip_encoder_without_weights_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="--clip-pretrained") as error:
        load_clip_encoder("ViT-B-32")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="--clip-pretrained"):
        load_clip_encoder("ViT-B-32", str(tmp_path / "missing.pt"))


# ------------------------------------------------------------------------------------------------ merge


def _bits(tensor):
    return tensor.contiguous().view(torch.int32)


def test_merge_is_exact_interpolation_with_bit_exact_ends():
    a, b = tiny_unet(0).state_dict(), tiny_unet(1).state_dict()
    key = next(iter(a))
    a[key] = a[key].clone()
    a[key].view(-1)[:2] = torch.tensor([-0.0, float("inf")])  # 1*a + 0*b would give +0.0 and nan here
    merged = merge_state_dicts(a, b, 0.3)
    for name in a:
        assert torch.equal(merged[name], 0.3 * a[name].float() + 0.7 * b[name].float())
    for lam, end in ((1.0, a), (0.0, b)):
        ends = merge_state_dicts(a, b, lam)
        assert all(torch.equal(_bits(ends[k]), _bits(end[k])) for k in a)
    with pytest.raises(ValueError, match="different weights"):
        merge_state_dicts(a, {k: v for k, v in b.items() if k != key}, 0.5)


def _lora(unet, seed=0):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(unet.requires_grad_(False), LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


def test_merge_unets_fuses_lora_first():
    lora, plain = _lora(tiny_unet(0)), tiny_unet(1)
    dense = copy.deepcopy(lora).merge_and_unload().state_dict()
    merged = merge_unets(lora, plain, 0.5).state_dict()
    assert "lora" not in " ".join(merged)
    for name, value in merged.items():
        assert torch.equal(value, 0.5 * dense[name] + 0.5 * plain.state_dict()[name])
    assert torch.equal(merge_unets(lora, plain, 1.0).state_dict()[name], dense[name])
    assert any("lora_B" in n for n, _ in lora.named_parameters())  # the input is left as it was


def test_merge_cli_writes_a_loadable_unet_folder_with_parents(tmp_path, capsys):
    from bench.load import load_unet, resolve_layout

    tiny_unet(0).save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "bench_base.json").write_text(json.dumps({"base": "some/base"}))
    tiny_unet(1).save_pretrained(tmp_path / "base_b")
    lora = _lora(tiny_unet(1), seed=5)
    lora.peft_config["default"].base_model_name_or_path = str(tmp_path / "base_b")
    lora.save_pretrained(tmp_path / "b_adapter")
    out = merge_main([str(tmp_path / "a"), str(tmp_path / "b_adapter"), "--lam", "0.25", "-o", str(tmp_path / "m"),
                      "--base", "some/base"])
    merged = load_unet(str(out)).state_dict()
    fused_b = copy.deepcopy(lora).merge_and_unload().state_dict()
    for name, value in tiny_unet(0).state_dict().items():
        assert torch.equal(merged[name], 0.25 * value + 0.75 * fused_b[name])
    record = json.loads((out / "merge.json").read_text())
    assert record["lam"] == 0.25 and record["a"]["location"].endswith("a") and record["b"]["sha256"]
    assert resolve_layout(str(out)) == (str(out), None, "some/base")


def test_merge_cli_rejects_mismatched_architectures_in_one_line(tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from bench.testing import TINY_UNET

    tiny_unet(0).save_pretrained(tmp_path / "a")
    UNet2DConditionModel(**{**TINY_UNET, "block_out_channels": (32, 32)}).save_pretrained(tmp_path / "b")
    with pytest.raises(SystemExit) as code:
        merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m"), "--base", "x"])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill.merge: error:") and "architectures" in err and "\n" not in err
    assert not (tmp_path / "m").exists()


def test_merge_accepts_configs_that_differ_only_where_nothing_is_computed(tmp_path, capsys):
    """SD 2.1-base's UNet config omits upcast_attention (False) where SD Turbo's says null, and sample_size only sets
    the default generation size: weight-compatible, so they merge, with A's config, and the difference is listed."""
    from bench.interpolate import config_differences
    from bench.load import load_unet

    a, b = tiny_unet(0), tiny_unet(1)
    b.register_to_config(upcast_attention=None, sample_size=24)
    assert config_differences(dict(a.config), dict(b.config)) == ([], ["sample_size"])
    assert config_differences(dict(a.config), {**a.config, "norm_eps": 1e-6})[0] == ["norm_eps"]  # changes outputs
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    out = merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--lam", "0.5", "-o", str(tmp_path / "m"),
                      "--base", "x"])
    assert load_unet(str(out)).config.sample_size == a.config.sample_size
    assert json.loads((out / "merge.json").read_text())["config_differences"] == {"sample_size": [16, 24]}


def test_merge_refuses_an_existing_output_and_replaces_it_only_whole(tmp_path, capsys):
    tiny_unet(0).save_pretrained(tmp_path / "a")
    tiny_unet(1).save_pretrained(tmp_path / "b")
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("earlier")
    args = [str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out), "--base", "x"]
    with pytest.raises(SystemExit) as code:
        merge_main(args)
    assert code.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    merge_main([*args, "--overwrite"])
    assert not (out / "old.txt").exists() and (out / "merge.json").exists()  # a whole new folder, not a mix
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_merge_of_a_corrupt_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    tiny_unet(0).save_pretrained(tmp_path / "a")
    tiny_unet(1).save_pretrained(tmp_path / "b")
    weights = tmp_path / "b" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit) as code:
        merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m"), "--base", "x"])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and err.startswith("distill.merge: error:") and "\n" not in err
    assert "model B" in err and not (tmp_path / "m").exists()


def test_lora_student_ema_is_the_ema_of_the_fused_weights():
    """diffusers' EMA of the factors A and B is not the EMA of B @ A: the student's EMA is taken over W + s B A."""
    model = _lora(tiny_unet(0))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ema = utils.StudentEMA(model, params, decay=0.9, lora=True)
    layers = utils.lora_layers(model)
    name, layer = next(iter(layers.items()))
    scale = layer.scaling["default"]
    fused = [layer.base_layer.weight + scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight]
    expected = fused[0].detach().clone()
    torch.manual_seed(1)
    for step in range(1, 4):
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn_like(p) * 0.1)
        ema.step()
        decay = min(0.9, (step - 1 + 1) / (step - 1 + 10)) if step > 1 else 0.0  # EMAModel's warm-up
        current = layer.base_layer.weight + scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        expected = decay * expected + (1 - decay) * current.detach()
    assert torch.allclose(ema.named_shadow()[name], expected, atol=1e-6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.applied(model):  # the dense EMA weights, adapters off
        x = torch.ones(1, layer.in_features)
        assert torch.allclose(layer(x), x @ expected.T, atol=1e-5)  # to_q / to_v carry no bias
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored


# ---------------------------------------------------------------------------------------------- prompts


def test_prompts_every_format_with_dedup(tmp_path):
    import pandas as pd

    (tmp_path / "p.txt").write_text("a cat\n\n  a dog \na cat\n")
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text('{"caption": "a cat"}\n"a dog"\n{"caption": "a cat"}\n')
    assert load_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog"]
    pd.DataFrame({"id": [1, 2, 3], "text": ["x, with comma", "y", "x, with comma"]}).to_csv(tmp_path / "p.csv")
    assert load_prompts(tmp_path / "p.csv") == ["x, with comma", "y"]
    assert load_prompts(tmp_path / "p.csv", column="id") == ["1", "2", "3"]
    with pytest.raises(UserError, match="no column 'nope'"):
        load_prompts(tmp_path / "p.csv", column="nope")


def test_prompts_parquet_or_a_clear_error_without_pyarrow(tmp_path):
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "p.parquet").write_bytes(b"PAR1")
        with pytest.raises(UserError, match="pyarrow"):
            load_prompts(tmp_path / "p.parquet")
        return
    pd.DataFrame({"prompt": ["b", None, "a", "b"]}).to_parquet(tmp_path / "p.parquet")
    assert load_prompts(tmp_path / "p.parquet") == ["b", "a"]  # a missing value is not the prompt "nan"


def test_prompts_empty_missing_or_unknown_are_user_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.xml").write_text("<a/>")
    with pytest.raises(UserError, match="unknown format"):
        load_prompts(tmp_path / "p.xml")


def test_prompt_files_drop_a_byte_order_mark_and_name_the_line_of_bad_bytes(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffa cat\na dog\n".encode())
    assert load_prompts(tmp_path / "bom.txt") == ["a cat", "a dog"]
    (tmp_path / "latin1.txt").write_bytes("a cat\na caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="line 2 is not UTF-8"):
        load_prompts(tmp_path / "latin1.txt")
    (tmp_path / "latin1.csv").write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="line 2 is not UTF-8"):
        load_prompts(tmp_path / "latin1.csv")


# ------------------------------------------------------------------------------------- data order, RNG


def test_batch_indices_cover_each_epoch_and_split_across_processes():
    count, batch = 10, 3
    first_epoch = np.concatenate([utils.batch_indices(s, count, batch, seed=0) for s in range(4)])[:count]
    assert sorted(first_epoch.tolist()) == list(range(count))
    one = utils.batch_indices(4, count, 2 * batch, seed=0)
    two = [utils.batch_indices(4, count, batch, 0, num_processes=2, process_index=i) for i in range(2)]
    assert np.array_equal(one, np.concatenate(two))


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    state = utils.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    utils.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
