"""Evaluation protocols: the prompts to generate, the reference images, the image preprocessing.

COCO-2014 30K as SwiftBrush v2 / GigaGAN / DMD2 evaluate it (``docs/protocol.md``): captions from
``captions_val2014.json`` (or a caption file), reference = all val2014 images, every image (real or generated)
centre-cropped to its short side and PIL-LANCZOS resized to 256 px (SBv2 ``tools/resize.py``, GigaGAN's
clean-fid ``custom_image_tranform``).
"""

import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from bench.errors import UserError

PRESETS = ("sbv2", "random", "file")
CLIP_PREFIX = "A photo depicts "
RESIZE = "center-crop+lanczos"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_COCO_LAYOUT = "annotations/captions_val2014.json and val2014/ (or val2014.zip)"


@dataclass(frozen=True)
class ReferenceSet:
    identity: str  # hash of the file list (names + sizes) or of the array bytes
    count: int
    load_batches: Callable[[int], Iterator[np.ndarray]]  # batch_size -> uint8 NHWC at metric resolution


@dataclass(frozen=True)
class Protocol:
    name: str  # "coco2014-30k-sbv2", "demo-digits"
    captions: tuple[str, ...]  # prompt of sample i
    caption_ids: tuple[str, ...]  # where each caption came from (COCO image id, file name, class)
    metric_resolution: int  # 256 for COCO, 8 for the demo
    resize: str  # names the preprocessing in hashes and outputs, e.g. "center-crop+lanczos"
    clip_prefix: str  # "A photo depicts " for COCO
    reference: ReferenceSet | None  # None when the suite's metrics need no reference images (HPS)
    to_metric_images: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC of any size -> metric resolution

    def hash(self) -> str:
        """Everything the protocol fixes, reference included: the identity of its metrics."""
        reference = [self.reference.identity, self.reference.count] if self.reference else [None, 0]
        payload = json.dumps(
            [self.name, list(self.captions), list(self.caption_ids), self.metric_resolution, self.resize,
             self.clip_prefix, *reference]
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def samples_hash(self) -> str:
        """What the stored samples and their features depend on (captions, metric resolution, resize), and not
        the reference images, which only the metrics use: repairing a reference file keeps every sample."""
        payload = json.dumps([list(self.captions), self.metric_resolution, self.resize])
        return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- captions
def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def read_utf8(path: str | Path, what: str, fix: str) -> str:
    """A text file as UTF-8 (a byte-order mark is dropped); one line naming the file, the line and the fix when it
    is missing, unreadable or not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found; {fix}") from None
    except OSError as error:
        raise UserError(f"{what} {path} is unreadable ({_one_line(error)}); {fix}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(f"{what} {path} line {line} is not UTF-8 (byte {data[error.start]:#04x}): save the file as "
                        "UTF-8 and rerun") from None


def _read(path: Path, what: str, fix: str, parse: Callable[[str], object] = str):
    text = read_utf8(path, what, fix)
    try:
        return parse(text)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{what} {path} is unreadable ({_one_line(error)}); {fix}") from None


def _check_n(n: int, available: int, source: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"--n must be a positive integer, got {n!r}")
    if n > available:
        raise UserError(f"--n {n} is larger than the {available} captions available in {source}; "
                        f"pass --n {available} or less")


def _check_preset(preset: str, valid: tuple[str, ...]) -> None:
    if preset not in valid:
        raise UserError(f"unknown caption preset {preset!r}; pass --preset with one of: {', '.join(valid)}")


def _rank(*parts) -> int:
    """A seeded pseudo-random integer that depends on nothing but its arguments (stable across library versions)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def coco_captions(annotation_file: str | Path, n: int = 30000, preset: str = "sbv2",
                  seed: int = 0) -> list[tuple[str, str]]:
    """Select ``n`` (file_name, caption) pairs from a COCO captions file, e.g. ``captions_val2014.json``.

    Args:
        annotation_file: COCO captions JSON (``images`` + ``annotations`` lists).
        n: how many captions to return.
        preset: ``"sbv2"``: images in the file's ``images`` order, each with its first caption in ``annotations``
            order, the first ``n`` (how SwiftBrush v2's ``dataset.json`` was built). ``"random"`` (GigaGAN / DMD2
            style): ``n`` distinct images drawn with ``seed``, one caption each drawn with ``seed``, returned in file
            order; the draw hashes (seed, file_name), so it does not change with numpy or Python versions.
        seed: only for ``"random"``.

    Returns:
        ``[(file_name, caption)]`` with the COCO ``file_name`` (``COCO_val2014_000000391895.jpg``) and the caption's
        exact text. Images without captions are skipped.

    Raises:
        UserError: missing / malformed file, unknown preset, ``n`` above the number of captioned images.
    """
    _check_preset(preset, ("sbv2", "random"))
    fix = "pass --coco DIR holding annotations/captions_val2014.json, or --captions FILE"
    data = _read(Path(annotation_file), "COCO annotation file", fix, json.loads)
    try:
        captions = {image["id"]: [] for image in data["images"]}  # dicts keep the file order
        names = {image["id"]: image["file_name"] for image in data["images"]}
        for number, annotation in enumerate(data["annotations"]):
            if not isinstance(annotation.get("caption"), str):
                raise UserError(f"COCO annotation file {annotation_file}: annotation {number} (id "
                                f"{annotation.get('id')}) has caption {annotation.get('caption')!r}, not a string; "
                                "repair or remove that annotation")
            captions.get(annotation["image_id"], []).append(annotation["caption"])
    except (KeyError, TypeError, AttributeError) as error:
        raise UserError(f"COCO annotation file {annotation_file} lacks images/annotations ({error}); {fix}") from None
    pool = [(names[image_id], texts) for image_id, texts in captions.items() if texts]
    _check_n(n, len(pool), f"{annotation_file}")
    if preset == "sbv2":
        return [(name, texts[0]) for name, texts in pool[:n]]
    chosen = sorted(sorted(range(len(pool)), key=lambda i: _rank(seed, pool[i][0]))[:n])
    return [(pool[i][0], pool[i][1][_rank(seed, pool[i][0], "caption") % len(pool[i][1])]) for i in chosen]


def load_caption_file(path: str | Path) -> list[tuple[str, str]]:
    """Read a caption list: SwiftBrush v2's ``dataset.json`` or plain text.

    ``*.json`` must be ``{"labels": [[name, caption], ...]}`` and gives ``[(name, caption)]`` with captions exactly as
    stored (SBv2's keep their trailing spaces). Any other file is UTF-8 text, one caption per line, in order; only
    the line ending (``\\n`` / ``\\r\\n``) is removed, ids are ``"<file name>:<line number>"``.
    A blank line is an error rather than being skipped, which would silently shift every later sample's caption.

    Raises:
        UserError: missing, malformed or empty file, or a blank line.
    """
    path = Path(path)
    fix = "pass --captions FILE with one caption per line or SwiftBrush v2's dataset.json"
    if path.suffix.lower() == ".json":
        labels = _read(path, "caption file", fix, json.loads)
        labels = labels.get("labels") if isinstance(labels, dict) else None
        if not isinstance(labels, list):
            raise UserError(f"caption file {path} is not {{\"labels\": [[name, caption], ...]}}; {fix}")
        for index, entry in enumerate(labels):
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(s, str) for s in entry)):
                raise UserError(f"caption file {path}: labels[{index}] is {entry!r:.80}, not [name, caption] "
                                "strings; repair or remove that entry")
        entries = [(name, caption) for name, caption in labels]
    else:
        lines = _read(path, "caption file", fix).split("\n")
        if lines[-1] == "":
            lines.pop()
        entries = []
        for number, line in enumerate(lines, 1):
            line = line.removesuffix("\r")
            if not line.strip():
                raise UserError(f"caption file {path} line {number} is blank; remove blank lines and rerun")
            entries.append((f"{path.name}:{number}", line))
    if not entries:
        raise UserError(f"caption file {path} is empty; {fix}")
    return entries


# ------------------------------------------------------------------------------------------------------ images
def center_crop_resize(img: Image.Image, size: int = 256) -> Image.Image:
    """RGB, centre square of side min(w, h) (BigGAN ``CenterCropLongEdge`` = torchvision ``center_crop``, whose
    offset is ``int(round((w - s) / 2.0))``), then PIL LANCZOS to ``size`` x ``size``."""
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, P, RGBA (alpha dropped, like clean-fid's .convert("RGB")), CMYK
    w, h = img.size
    s = min(w, h)
    left, top = round((w - s) / 2), round((h - s) / 2)  # Python round: half to even, like torchvision
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.LANCZOS)


def to_metric_images(images: np.ndarray, size: int = 256) -> np.ndarray:
    """uint8 NHWC of any size -> uint8 (N, size, size, 3) by ``center_crop_resize`` per image."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1:3] == (size, size):
        return images  # a same-size LANCZOS resize is a copy
    with ThreadPoolExecutor() as pool:
        out = list(pool.map(lambda a: np.asarray(center_crop_resize(Image.fromarray(a), size)), images))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def _decode(name: str, data: bytes, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(center_crop_resize(img, size))
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"reference image {name} is corrupt ({_one_line(error)}); "
                        "re-download COCO val2014 or replace that file") from None


def coco_reference(source: str | Path, resolution: int = 256) -> ReferenceSet:
    """All .jpg/.png images directly in a folder, or anywhere in a zip (``val2014.zip``), sorted by file name.

    ``identity`` hashes the sorted (file name, byte size) list together with the resolution and ``RESIZE``, so a
    folder and a zip of the same files share it and a cache keyed on it never mixes preprocessings.
    Batches are decoded by a thread pool (PIL releases the GIL), in order.
    """
    source = Path(source)
    if source.is_dir():
        members = sorted((e.name, e.stat().st_size, e.path) for e in os.scandir(source)
                         if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES) and not e.name.startswith("."))
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = sorted((Path(i.filename).name, i.file_size, i.filename) for i in archive.infolist()
                             if not i.is_dir() and i.filename.lower().endswith(_IMAGE_SUFFIXES)
                             and not Path(i.filename).name.startswith(".") and "__MACOSX" not in i.filename)
    else:
        raise UserError(f"reference images {source} is neither a folder nor a zip; "
                        f"pass --coco DIR holding {_COCO_LAYOUT}")
    if not members:
        raise UserError(f"no .jpg/.png images in {source}; pass --coco DIR holding {_COCO_LAYOUT}")
    identity = hashlib.sha256(json.dumps([RESIZE, resolution, [m[:2] for m in members]]).encode()).hexdigest()

    def load_batches(batch_size: int) -> Iterator[np.ndarray]:
        archive = zipfile.ZipFile(source) if not source.is_dir() else None
        lock = threading.Lock()

        def load(member: tuple[str, int, str]) -> np.ndarray:
            if archive is None:
                return _decode(member[2], Path(member[2]).read_bytes(), resolution)
            with lock:  # one reader at a time on the shared zip file; decoding runs in parallel
                data = archive.read(member[2])
            return _decode(f"{source}:{member[2]}", data, resolution)

        try:
            with ThreadPoolExecutor() as pool:
                for start in range(0, len(members), batch_size):
                    yield np.stack(list(pool.map(load, members[start:start + batch_size])))
        finally:
            if archive is not None:
                archive.close()

    return ReferenceSet(identity=identity, count=len(members), load_batches=load_batches)


# ---------------------------------------------------------------------------------------------------- protocol
def _count_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def coco_protocol(coco_dir: str | Path | None = None, *, annotation_file: str | Path | None = None,
                  images: str | Path | None = None, captions_file: str | Path | None = None, preset: str = "sbv2",
                  n: int = 30000, seed: int = 0, resolution: int = 256) -> Protocol:
    """The COCO-2014 protocol: ``n`` captions + all val2014 images as reference, at ``resolution`` px.

    Args:
        coco_dir: folder holding ``annotations/captions_val2014.json`` and ``val2014/`` or ``val2014.zip``.
        annotation_file, images: override those two paths.
        captions_file: ``load_caption_file`` input; its first ``n`` captions replace the preset ("file" preset).
        preset: ``"sbv2"`` or ``"random"`` (see ``coco_captions``); ``"file"`` requires ``captions_file``.

    Returns:
        A Protocol named ``coco2014-30k-sbv2``, ``coco2014-30k-random-seed0`` or ``coco2014-30k-file-<sha256[:12]>``.

    Raises:
        UserError: a missing path, a bad caption file, an unknown preset, ``n`` above the captions available,
            a corrupt reference image (while loading batches).
    """
    _check_preset(preset, PRESETS)
    coco = Path(coco_dir) if coco_dir is not None else None
    if coco is not None and not coco.is_dir():
        raise UserError(f"COCO folder {coco} not found; pass --coco DIR holding {_COCO_LAYOUT}")
    if captions_file is not None:
        entries = load_caption_file(captions_file)
        _check_n(n, len(entries), f"caption file {captions_file}")
        entries = entries[:n]
        digest = hashlib.sha256(Path(captions_file).read_bytes()).hexdigest()
        name = f"coco2014-{_count_label(n)}-file-{digest[:12]}"
    elif preset == "file":
        raise UserError("caption preset 'file' needs a caption file; pass --captions FILE")
    else:
        if annotation_file is None:
            if coco is None:
                raise UserError(f"no COCO captions given; pass --coco DIR holding {_COCO_LAYOUT}, or --captions FILE")
            annotation_file = coco / "annotations" / "captions_val2014.json"
        entries = coco_captions(annotation_file, n=n, preset=preset, seed=seed)
        name = f"coco2014-{_count_label(n)}-{preset}" + (f"-seed{seed}" if preset == "random" else "")
    if images is None:
        if coco is None:
            raise UserError(f"no COCO reference images given; pass --coco DIR holding {_COCO_LAYOUT}")
        images = coco / "val2014" if (coco / "val2014").is_dir() else coco / "val2014.zip"
        if not images.exists():
            raise UserError(f"COCO reference images not found: expected {coco / 'val2014'}/ or {images}; "
                            f"put val2014 there or pass --coco DIR holding {_COCO_LAYOUT}")
    elif not Path(images).exists():
        raise UserError(f"reference images {images} not found; pass a val2014/ folder or val2014.zip")
    return Protocol(
        name=name,
        captions=tuple(caption for _, caption in entries),
        caption_ids=tuple(caption_id for caption_id, _ in entries),
        metric_resolution=resolution,
        resize=RESIZE,
        clip_prefix=CLIP_PREFIX,
        reference=coco_reference(images, resolution),
        to_metric_images=partial(to_metric_images, size=resolution),
    )
