"""bench.protocol on synthetic COCO data: caption presets, caption files, preprocessing, references, errors."""

import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from bench.errors import UserError
from bench.protocol import (
    CLIP_PREFIX,
    RESIZE,
    center_crop_resize,
    coco_captions,
    coco_protocol,
    coco_reference,
    load_caption_file,
    to_metric_images,
)

LANCZOS = Image.Resampling.LANCZOS


def _name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.jpg"


# images out of id order; 99 has no caption; annotations interleaved, annotation ids not monotonic
IMAGE_IDS = [42, 7, 99, 13, 5]
ANNOTATIONS = [(7, 900, "seven first"), (42, 300, "forty-two first "), (13, 12, "thirteen first"),
               (42, 1, "forty-two second"), (7, 2, "seven second"), (5, 800, "five first"), (13, 3, "thirteen second")]


def _annotations(image_ids, annotations):
    return {"images": [{"id": i, "file_name": _name(i), "width": 8, "height": 8} for i in image_ids],
            "annotations": [{"image_id": i, "id": a, "caption": c} for i, a, c in annotations]}


def _write_images(folder):
    """Non-square RGB, grayscale, CMYK JPEGs and palette / RGBA PNGs, like the odd files of val2014."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8))
    rgb.save(folder / _name(42))
    rgb.convert("L").save(folder / _name(7))
    rgb.convert("CMYK").save(folder / _name(13))
    rgb.convert("RGBA").transpose(Image.Transpose.TRANSPOSE).save(folder / "COCO_val2014_000000000005.png")
    rgb.convert("P").save(folder / "COCO_val2014_000000000099.png")


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(_annotations(IMAGE_IDS, ANNOTATIONS)))
    _write_images(root / "val2014")
    return root


def _error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------- captions
def test_sbv2_is_file_order_with_first_caption_in_annotation_order(coco):
    file = coco / "annotations" / "captions_val2014.json"
    assert coco_captions(file, n=4) == [(_name(42), "forty-two first "), (_name(7), "seven first"),
                                        (_name(13), "thirteen first"), (_name(5), "five first")]
    assert coco_captions(file, n=2, preset="sbv2") == coco_captions(file, n=4)[:2]
    random_names = {name for name, _ in coco_captions(file, n=4, preset="random")}
    assert random_names == {_name(i) for i in (42, 7, 13, 5)}  # image 99 has no caption


def test_random_is_seeded_distinct_and_captions_belong_to_their_image(tmp_path):
    ids = list(range(60, 0, -1))
    annotations = [(i, 1000 * k + i, f"image {i} caption {k}") for k in range(5) for i in ids]
    file = tmp_path / "captions.json"
    file.write_text(json.dumps(_annotations(ids, annotations)))
    draws = {seed: coco_captions(file, n=20, preset="random", seed=seed) for seed in (0, 1)}
    assert coco_captions(file, n=20, preset="random", seed=0) == draws[0]
    assert draws[0] != draws[1]
    for draw in draws.values():
        names = [name for name, _ in draw]
        assert len(set(names)) == 20
        assert names == sorted(names, key=lambda name: ids.index(int(name[-16:-4])))  # file order
        assert all(caption.startswith(f"image {int(name[-16:-4])} caption ") for name, caption in draw)
    assert len({caption.split()[-1] for _, caption in draws[0]}) > 1  # not always the first caption


def test_dataset_json_keeps_exact_captions(tmp_path):
    labels = [["00000/img00000000.png", "A man with a red helmet on a small moped on a dirt road. "],
              ["00000/img00000001.png", "  two  spaces  "]]
    file = tmp_path / "dataset.json"
    file.write_text(json.dumps({"labels": labels}))
    assert load_caption_file(file) == [tuple(label) for label in labels]


def test_txt_strips_only_line_endings(tmp_path):
    file = tmp_path / "captions.txt"
    file.write_bytes(b"a cat \r\n  a dog\nno newline at end")
    assert load_caption_file(file) == [("captions.txt:1", "a cat "), ("captions.txt:2", "  a dog"),
                                       ("captions.txt:3", "no newline at end")]
    file.write_text("one\n\nthree\n")
    assert "line 2" in _error(lambda: load_caption_file(file))


# ------------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("size", [(41, 30), (43, 30), (30, 45), (40, 40)])
def test_center_crop_resize_matches_hand_computation(size):
    w, h = size
    img = Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    box = {(41, 30): (6, 0, 36, 30), (43, 30): (6, 0, 36, 30), (30, 45): (0, 8, 30, 38), (40, 40): (0, 0, 40, 40)}
    expected = np.asarray(img.crop(box[size]).resize((16, 16), LANCZOS))
    assert np.array_equal(np.asarray(center_crop_resize(img, 16)), expected)
    tvf = pytest.importorskip("torchvision.transforms.functional")
    assert np.array_equal(np.asarray(tvf.center_crop(img, min(w, h))), np.asarray(img.crop(box[size])))


def test_odd_modes_are_converted_to_rgb(coco):
    for path in sorted((coco / "val2014").iterdir()):
        with Image.open(path) as img:
            out = center_crop_resize(img, 8)
            assert out.mode == "RGB" and out.size == (8, 8)
            assert np.array_equal(np.asarray(out), np.asarray(center_crop_resize(img.convert("RGB"), 8)))


def test_to_metric_images_lanczos_512_to_256():
    images = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    out = to_metric_images(images)
    assert out.shape == (2, 256, 256, 3) and out.dtype == np.uint8
    for image, result in zip(images, out):
        assert np.array_equal(result, np.asarray(Image.fromarray(image).resize((256, 256), LANCZOS)))
    assert to_metric_images(images[:, :300], size=64).shape == (2, 64, 64, 3)


def test_folder_and_zip_references_agree(coco, tmp_path):
    folder = coco / "val2014"
    with zipfile.ZipFile(tmp_path / "val2014.zip", "w") as archive:
        archive.writestr("val2014/", "")
        for path in sorted(folder.iterdir(), reverse=True):
            archive.write(path, f"val2014/{path.name}")
    from_folder, from_zip = coco_reference(folder, 16), coco_reference(tmp_path / "val2014.zip", 16)
    assert from_folder.count == from_zip.count == 5
    assert from_folder.identity == from_zip.identity
    batches = list(from_folder.load_batches(2))
    assert [len(b) for b in batches] == [2, 2, 1] and batches[0].dtype == np.uint8
    arrays = np.concatenate(batches)
    assert np.array_equal(arrays, np.concatenate(list(from_zip.load_batches(3))))
    with Image.open(folder / _name(13)) as img:  # sorted by name: 000005.png, 000007, 000013, ...
        assert np.array_equal(arrays[2], np.asarray(center_crop_resize(img, 16)))
    assert coco_reference(folder, 32).identity != from_folder.identity
    Image.new("RGB", (50, 20), "red").save(folder / _name(42))
    assert coco_reference(folder, 16).identity != from_folder.identity


# ---------------------------------------------------------------------------------------------------- protocol
def test_coco_protocol(coco, tmp_path):
    protocol = coco_protocol(coco, n=3, resolution=16)
    assert protocol.name == "coco2014-3-sbv2"
    assert protocol.captions == ("forty-two first ", "seven first", "thirteen first")
    assert protocol.caption_ids == (_name(42), _name(7), _name(13))
    assert (protocol.clip_prefix, protocol.resize, protocol.metric_resolution) == (CLIP_PREFIX, RESIZE, 16)
    assert protocol.reference.count == 5
    assert protocol.to_metric_images(np.zeros((1, 32, 48, 3), np.uint8)).shape == (1, 16, 16, 3)
    assert coco_protocol(coco, n=3, preset="random", seed=2, resolution=16).name == "coco2014-3-random-seed2"
    assert coco_protocol(coco, n=3, resolution=16).hash() == protocol.hash()

    (tmp_path / "captions.txt").write_text("x\ny\nz\n")
    from_file = coco_protocol(coco, captions_file=tmp_path / "captions.txt", n=2, resolution=16)
    assert from_file.captions == ("x", "y") and from_file.name.startswith("coco2014-2-file-")
    shutil.make_archive(str(tmp_path / "zipped" / "val2014"), "zip", coco, "val2014")
    shutil.rmtree(coco / "val2014")
    (coco / "val2014.zip").write_bytes((tmp_path / "zipped" / "val2014.zip").read_bytes())
    assert coco_protocol(coco, n=3, resolution=16).hash() == protocol.hash()


def test_errors_name_the_problem_and_the_option(coco, tmp_path):
    message = _error(lambda: coco_protocol(tmp_path / "missing"))
    assert str(tmp_path / "missing") in message and "--coco" in message
    assert "--coco" in _error(lambda: coco_protocol())
    message = _error(lambda: coco_protocol(tmp_path))  # a folder without annotations/
    assert str(tmp_path / "annotations" / "captions_val2014.json") in message and "--captions" in message
    (tmp_path / "empty.txt").write_text("")
    assert "--captions" in _error(lambda: coco_protocol(coco, captions_file=tmp_path / "empty.txt"))
    message = _error(lambda: coco_protocol(coco, n=10))
    assert "4 captions available" in message and "--n 4" in message
    message = _error(lambda: coco_protocol(coco, preset="gigagan"))
    assert "sbv2" in message and "random" in message
    assert "--captions" in _error(lambda: coco_protocol(coco, preset="file"))
    (coco / "val2014" / "COCO_val2014_000000000099.png").write_bytes(b"not an image")
    protocol = coco_protocol(coco, n=2, resolution=8)
    assert "COCO_val2014_000000000099.png" in _error(lambda: list(protocol.reference.load_batches(8)))
    jpeg = (coco / "val2014" / _name(42)).read_bytes()
    (coco / "val2014" / _name(42)).write_bytes(jpeg[: len(jpeg) // 2])
    assert _name(42) in _error(lambda: list(coco_reference(coco / "val2014", 8).load_batches(8)))
    shutil.rmtree(coco / "val2014")
    assert "val2014.zip" in _error(lambda: coco_protocol(coco, n=2))
