"""Feature extractors and the feature cache, offline: stand-in Inception TorchScript, tiny random open_clip."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
import threading
import time
import urllib.request
import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cleanfid import downloads_helper, inception_torchscript
from cleanfid import features as cleanfid_features
from cleanfid import fid as cleanfid_fid
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image

from bench import features
from bench.errors import UserError
from bench.features import ClipExtractor, build_extractor, cached_features, clip, clip_text, inception
from bench.hashing import file_sha256
from bench.metrics.clipscore import clip_score
from bench.protocol import ReferenceSet
from bench.tf32 import tf32


def _no_network(*args, **kwargs):
    raise RuntimeError("network access in a test")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """Every download path we could reach raises; clean-fid's hard-coded /tmp weights folder is an empty dir."""
    import huggingface_hub

    for module, name in [
        (downloads_helper, "check_download_inception"),
        (downloads_helper, "check_download_url"),
        (inception_torchscript, "check_download_inception"),
        (cleanfid_features, "check_download_url"),
        (open_clip.pretrained, "download_pretrained"),
        (open_clip.pretrained, "download_pretrained_from_url"),
        (open_clip.pretrained, "download_pretrained_from_hf"),
        (open_clip.pretrained, "hf_hub_download"),
        (open_clip.factory, "download_pretrained"),
        (open_clip.factory, "download_pretrained_from_hf"),
        (huggingface_hub, "hf_hub_download"),
        (torch.hub, "load_state_dict_from_url"),
        (torch.hub, "download_url_to_file"),
        (urllib.request, "urlopen"),
    ]:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _no_network)
    empty = tmp_path_factory.mktemp("cleanfid-default")
    monkeypatch.setattr(inception, "CLEANFID_WEIGHTS_DIR", empty)
    monkeypatch.delenv("BENCH_WEIGHTS_DIR", raising=False)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared two-core machine: extra threads only wait
    yield
    torch.set_num_threads(torch_threads)


# ------------------------------------------------------------------------------------------------- feature cache


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_cache_hit_does_not_call_compute(tmp_path):
    key = {"extractor": "x/sha256=abc", "reference": "r1", "count": 3}
    compute, calls = counting(np.arange(6, dtype=np.float32).reshape(3, 2))
    first = cached_features(tmp_path, key, compute)
    second = cached_features(tmp_path, dict(reversed(list(key.items()))), compute)  # key order is irrelevant
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32
    (npy,) = tmp_path.glob("*.npy")
    assert json.loads(npy.with_suffix(".json").read_text()) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([npy.name, npy.stem + ".json"])


@pytest.mark.parametrize("part, value", [("extractor", "x/sha256=abd"), ("reference", "r2"), ("count", 4), ("new", 0)])
def test_cache_misses_when_any_key_part_changes(tmp_path, part, value):
    key = {"extractor": "x/sha256=abc", "reference": "r1", "count": 3}
    compute, calls = counting(np.zeros((3, 2), np.float32))
    cached_features(tmp_path, key, compute)
    cached_features(tmp_path, {**key, part: value}, compute)
    assert len(calls) == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_cache_writes_nothing_when_compute_fails(tmp_path):
    def compute():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_features(tmp_path / "cache", {"a": 1}, compute)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    def broken_save(file, array, **kwargs):
        file.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cached_features(tmp_path, {"a": 1}, lambda: np.ones((2, 2), np.float32))
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    monkeypatch.undo()
    compute, calls = counting(np.ones((2, 2), np.float32))
    cached_features(tmp_path, {"a": 1}, compute)
    assert len(calls) == 1  # the failed write left nothing that looks like a hit


class FakeExtractor(features.TextImageExtractor):
    def __init__(self, id="fake/v1"):
        self.id, self.image_calls, self.text_calls = id, 0, 0

    def image_features(self, images):
        self.image_calls += 1
        return images.reshape(len(images), -1)[:, :4].astype(np.float32)

    def text_features(self, texts):
        self.text_calls += 1
        return np.array([[len(t), t.count("a")] for t in texts], np.float32)


def make_reference(identity, images):
    def load_batches(batch_size):
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]

    return ReferenceSet(identity=identity, count=len(images), load_batches=load_batches)


def test_reference_features_are_cached_by_identity_count_and_extractor(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)
    extractor = FakeExtractor()
    first = features.reference_features(make_reference("ref-a", images), extractor, tmp_path, batch_size=3)
    assert first.shape == (7, 4) and first.dtype == np.float32 and extractor.image_calls == 3
    np.testing.assert_array_equal(first, images.reshape(7, -1)[:, :4])
    features.reference_features(make_reference("ref-a", images), extractor, tmp_path, batch_size=5)
    assert extractor.image_calls == 3
    features.reference_features(make_reference("ref-b", images), extractor, tmp_path)
    features.reference_features(make_reference("ref-a", images[:6]), extractor, tmp_path)
    assert extractor.image_calls == 5
    other = FakeExtractor("fake/v2")
    features.reference_features(make_reference("ref-a", images), other, tmp_path)
    assert other.image_calls == 1


def test_reference_features_check_the_count(tmp_path):
    reference = ReferenceSet(identity="r", count=5, load_batches=lambda b: iter([np.zeros((3, 2, 2, 3), np.uint8)]))
    with pytest.raises(ValueError, match="expected 5"):
        features.reference_features(reference, FakeExtractor(), tmp_path)


def test_text_features_are_cached_by_texts_and_extractor(tmp_path):
    extractor = FakeExtractor()
    texts = [clip_text(c) for c in ["a cat", "a banana", "dog"]]
    first = features.text_features_cached(texts, extractor, tmp_path, batch_size=2)
    np.testing.assert_array_equal(first, extractor.text_features(texts))
    calls = extractor.text_calls
    features.text_features_cached(texts, extractor, tmp_path)
    assert extractor.text_calls == calls
    features.text_features_cached(texts[:2] + ["dog "], extractor, tmp_path)
    assert extractor.text_calls > calls


def test_clip_text_prefix_is_explicit():
    assert clip_text("a cat") == "A photo depicts a cat"
    assert clip_text("a cat", prefix="") == "a cat"


# ------------------------------------------------------------------------------------------------------ registry


def test_builtin_extractors_are_registered():
    assert {"inception", "inception-adm", "clip"} <= set(features.EXTRACTORS)


def test_unknown_extractor_is_a_one_line_user_error():
    with pytest.raises(UserError) as error:
        build_extractor("incepton")
    message = str(error.value)
    assert "\n" not in message and "'inception'" in message and "clip" in message


def test_tf32_flags_are_set_and_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32(False):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_tf32_forwards_in_threads_see_their_own_setting_and_the_flags_come_back():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    seen, barrier = [], threading.Barrier(4)

    def forward(allowed: bool):
        barrier.wait()
        for _ in range(200):
            with tf32(allowed):
                flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
                time.sleep(0)
                seen.append((allowed, flags, (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))

    threads = [threading.Thread(target=forward, args=(allowed,)) for allowed in (True, False, True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 800
    assert all(entry == flag == (allowed, allowed) for allowed, entry, flag in seen)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# ---------------------------------------------------------------------------------------------------- Inception


class StandInLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.proj = nn.Linear(8 * 16, 2048)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1)).view(-1, 2048, 1, 1)


class StandInInception(nn.Module):
    """The interface clean-fid's InceptionV3W uses: ``.layers(x)`` on normalised 299 px input, and
    ``forward(img, return_features=True)`` on [0, 255] input of any size (resized inside, like NVIDIA's file)."""

    def __init__(self):
        super().__init__()
        self.layers = StandInLayers()

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = img.to(torch.float32)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        features = self.layers((x - 128) / 128)
        return features if return_features else features.softmax(1)


@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.14
        torch.jit.script(StandInInception().eval()).save(str(folder / inception.INCEPTION_FILE))
    return folder


@pytest.fixture(scope="module")
def images():
    # Not 299 px, so the resize matters; the protocol's 256 px would only cost time.
    return np.random.default_rng(0).integers(0, 256, size=(5, 48, 40, 3), dtype=np.uint8)


def cleanfid_pipeline(images, tmp_path, weights_dir, mode, bgr=False):
    """clean-fid's own path: its ResizeDataset over .npy files, its resizer for the mode, its InceptionV3W."""
    files = []
    for i, image in enumerate(images):
        files.append(str(tmp_path / f"{i}.npy"))
        np.save(files[-1], image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = InceptionV3W(str(weights_dir), download=False, resize_inside=mode == "legacy_tensorflow")
    return cleanfid_fid.get_files_features(
        files,
        model=model,
        num_workers=0,
        batch_size=2,
        device=torch.device("cpu"),
        mode=mode,
        verbose=False,
        custom_image_tranform=(lambda x: x[..., ::-1]) if bgr else None,
    )


def test_inception_equals_cleanfid_clean_mode(monkeypatch, tmp_path, inception_dir, images):
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(inception_dir))
    extractor = build_extractor("inception", batch_size=3)
    ours = extractor.image_features(images)
    assert ours.shape == (5, 2048) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, cleanfid_pipeline(images, tmp_path, inception_dir, "clean"), rtol=1e-5, atol=1e-6)
    sha = file_sha256(inception_dir / inception.INCEPTION_FILE)
    assert "inception-clean" in extractor.id and sha in extractor.id and extractor.id.endswith("tf32=0")


def test_inception_adm_equals_cleanfid_legacy_tensorflow_on_bgr(monkeypatch, tmp_path, inception_dir, images):
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(inception_dir))
    extractor = build_extractor("inception-adm", batch_size=2)
    ours = extractor.image_features(images)
    expected = cleanfid_pipeline(images, tmp_path, inception_dir, "legacy_tensorflow", bgr=True)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    rgb = cleanfid_pipeline(images, tmp_path, inception_dir, "legacy_tensorflow", bgr=False)
    assert not np.allclose(ours, rgb, atol=1e-4)
    assert extractor.id != build_extractor("inception").id


def test_inception_explicit_path_under_any_name(monkeypatch, tmp_path, inception_dir, images):
    renamed = tmp_path / "my-inception.pt"
    shutil.copy(inception_dir / inception.INCEPTION_FILE, renamed)
    from_file = build_extractor("inception", weights=str(renamed))
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(inception_dir))
    from_env = build_extractor("inception")
    assert from_file.id == from_env.id  # same bytes, same id
    np.testing.assert_array_equal(from_file.image_features(images), from_env.image_features(images))
    assert build_extractor("inception", weights=str(renamed), allow_tf32=True).id.endswith("tf32=1")


@pytest.mark.parametrize(
    "setup",
    ["nothing", "explicit-missing", "env-missing", "corrupt"],
)
def test_missing_inception_weights_is_a_one_line_user_error(monkeypatch, tmp_path, setup):
    options = {}
    if setup == "explicit-missing":
        options["weights"] = str(tmp_path / "nope.pt")
    elif setup == "env-missing":
        monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path))
    elif setup == "corrupt":
        (tmp_path / inception.INCEPTION_FILE).write_bytes(b"not a torchscript archive\n")
        options["weights"] = str(tmp_path / inception.INCEPTION_FILE)
    with pytest.raises(UserError) as error:
        build_extractor("inception-adm" if setup == "corrupt" else "inception", **options)
    message = str(error.value)
    assert "\n" not in message
    assert "--inception-weights FILE" in message and "BENCH_WEIGHTS_DIR" in message
    assert inception.INCEPTION_URL in message


def test_inception_rejects_non_uint8_images(monkeypatch, inception_dir):
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(inception_dir))
    with pytest.raises(ValueError, match="uint8"):
        build_extractor("inception").image_features(np.zeros((1, 8, 8, 3), np.float32))


# --------------------------------------------------------------------------------------------------------- CLIP

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip(monkeypatch, tmp_path):
    """A random-weight open_clip model registered as 'bench-tiny' with a tag 'tiny'; its weights saved to a file."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "bench-tiny", TINY_CLIP)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "bench-tiny", {"tiny": open_clip.pretrained._pcfg()})
    torch.manual_seed(0)
    model = open_clip.create_model("bench-tiny", pretrained=None)
    path = tmp_path / "tiny.bin"
    torch.save(model.state_dict(), path)
    return path


CAPTIONS = ["A man with a red helmet on a small moped on a dirt road. ", "A woman marking a cake.", "two dogs"]


def direct_clip_score(weights, images, captions):
    """What SwiftBrush v2's eval/clip_score.py does, with open_clip directly."""
    model, _, preprocess = open_clip.create_model_and_transforms("bench-tiny", pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer("bench-tiny")
    model.eval()
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(Image.fromarray(im)) for im in images]))
        text = model.encode_text(tokenizer(["A photo depicts " + c for c in captions]))
    return F.cosine_similarity(image, text).mean().item()


@pytest.fixture(scope="module")
def images_256():
    return np.random.default_rng(1).integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)


def test_clip_score_equals_direct_open_clip(tiny_clip, images_256):
    extractor = build_extractor("clip", model="bench-tiny", pretrained=str(tiny_clip), batch_size=2)
    image_features = extractor.image_features(images_256)
    text_features = extractor.text_features([clip_text(c) for c in CAPTIONS])
    assert image_features.shape == text_features.shape == (3, 16) and image_features.dtype == np.float32
    ours = clip_score(image_features, text_features)
    assert ours == pytest.approx(direct_clip_score(tiny_clip, images_256, CAPTIONS), abs=1e-6)
    assert file_sha256(tiny_clip) in extractor.id


def test_clip_weights_from_bench_weights_dir_and_explicit_file(monkeypatch, tmp_path, tiny_clip, images_256):
    explicit = build_extractor("clip", model="bench-tiny", pretrained="tiny", weights=str(tiny_clip))
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    shutil.copy(tiny_clip, weights_dir / clip.clip_weights_names("bench-tiny", "tiny")[1])
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(weights_dir))
    from_env = build_extractor("clip", model="bench-tiny", pretrained="tiny")
    assert from_env.id == explicit.id
    np.testing.assert_array_equal(from_env.image_features(images_256), explicit.image_features(images_256))


def test_clip_from_components_matches_the_file_path(tiny_clip, images_256):
    model, _, preprocess = open_clip.create_model_and_transforms("bench-tiny", pretrained=str(tiny_clip))
    wrapped = ClipExtractor.from_components(model, preprocess, open_clip.get_tokenizer("bench-tiny"))
    loaded = build_extractor("clip", model="bench-tiny", pretrained=str(tiny_clip))
    np.testing.assert_allclose(wrapped.image_features(images_256), loaded.image_features(images_256), atol=1e-6)
    np.testing.assert_allclose(wrapped.text_features(CAPTIONS), loaded.text_features(CAPTIONS), atol=1e-6)
    torch.nn.init.zeros_(model.text_projection)
    changed = ClipExtractor.from_components(model, preprocess, open_clip.get_tokenizer("bench-tiny"))
    assert changed.id != wrapped.id


@pytest.mark.parametrize("setup", ["download-fails", "explicit-missing", "corrupt"])
def test_missing_clip_weights_is_a_one_line_user_error(tmp_path, tiny_clip, setup):
    options = {"model": "bench-tiny", "pretrained": "tiny"}
    if setup == "explicit-missing":
        options["weights"] = str(tmp_path / "nope.bin")
    elif setup == "corrupt":
        (tmp_path / "bad.bin").write_bytes(b"garbage\nmore garbage")
        options["weights"] = str(tmp_path / "bad.bin")
    with pytest.raises(UserError) as error:
        build_extractor("clip", **options)
    message = str(error.value)
    assert "\n" not in message and "--clip-weights" in message and "BENCH_WEIGHTS_DIR" in message


def test_default_clip_without_weights_is_a_user_error_not_a_download():
    with pytest.raises(UserError) as error:
        build_extractor("clip")
    message = str(error.value)
    assert "\n" not in message and "ViT-g-14" in message and "open_clip_ViT-g-14_laion2b_s12b_b42k.bin" in message


def test_unknown_clip_model_or_tag_is_a_user_error(tiny_clip):
    with pytest.raises(UserError, match="unknown open_clip model"):
        build_extractor("clip", model="ViT-Q-99")
    with pytest.raises(UserError, match="unknown open_clip pretrained tag"):
        build_extractor("clip", model="bench-tiny", pretrained="nope")
