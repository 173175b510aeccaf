"""Feature extractors (Inception, CLIP, and the demo world's) and the on-disk feature cache.

Every extractor takes uint8 NHWC RGB images at the protocol's metric resolution and owns its own
preprocessing and weights; its ``id`` names both, so that cached features never go stale.

Built-in extractors (``build_extractor(name, **options)``):

- ``"inception"``: clean-fid ``mode="clean"`` exactly (clean-fid 0.1.35): clean-fid's PIL-bicubic float resizer
  to 299 x 299 per image, then its TorchScript Inception wrapper ``InceptionV3W`` (2048-d pool3). This is the FID
  of SwiftBrush v2, GigaGAN and DMD2.
- ``"inception-adm"``: clean-fid ``mode="legacy_tensorflow"`` (resize inside the network) fed BGR images: our
  approximation of the ADM evaluator that SwiftBrush v2's precision/recall used (TF graph, ``cv2.imread``).
- ``"clip"``: open_clip, ViT-g-14 ``laion2b_s12b_b42k`` by default, image and text embeddings.

Weights are never fetched silently from an unexpected place; resolution order is documented on
``resolve_inception_weights`` and ``resolve_clip_weights``.
"""

import difflib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.errors import UserError
from bench.protocol import ReferenceSet
from bench.store import atomic_write_bytes, atomic_write_text, read_json


class FeatureExtractor:
    id: str  # stable; includes the sha256 of the weights file and the preprocessing

    def image_features(self, images: np.ndarray) -> np.ndarray:  # float32 (N, D)
        raise NotImplementedError


class TextImageExtractor(FeatureExtractor):
    def text_features(self, texts: list[str]) -> np.ndarray:  # float32 (N, D)
        raise NotImplementedError


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    if name in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is already registered")
    EXTRACTORS[name] = factory


def build_extractor(name: str, **options) -> FeatureExtractor:
    """Build a registered extractor, e.g. ``build_extractor("inception", weights="inception-2015-12-05.pt")``.

    Raises:
        UserError: for an unknown name; the message lists the registered ones.
    """
    if name not in EXTRACTORS:
        close = difflib.get_close_matches(name, EXTRACTORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown feature extractor {name!r}{hint}; choose one of: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name](**options)


# ---------------------------------------------------------------------------------------------------------------
# On-disk cache


def _canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_features(cache_dir: str | Path, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Return ``compute()``, cached on disk under the sha256 of a canonical JSON of ``key``.

    The array goes to ``<cache_dir>/<sha>.npy`` and the key, for humans, to ``<sha>.json``; both are written
    atomically (temp file in the same folder, then ``os.replace``), the ``.npy`` last. Any change in any key
    part is a miss, so the key must name everything the features depend on (extractor id, data identity).

    Args:
        cache_dir: folder of the cache; created when missing.
        key: JSON-serialisable dict.
        compute: called only on a miss; must return a numpy array.

    Returns:
        The cached or freshly computed array.
    """
    cache_dir = Path(cache_dir)
    digest = _sha256_text(_canonical_json(key))
    path = cache_dir / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    features = compute()
    if not isinstance(features, np.ndarray):
        raise TypeError(f"compute() must return a numpy array, got {type(features).__name__}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    key_json = json.dumps(key, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(cache_dir / f"{digest}.json", lambda f: f.write(key_json.encode("utf-8")))
    atomic_write_bytes(path, lambda f: np.save(f, features, allow_pickle=False))
    return features


def _batched_features(batches: Iterable, total: int, fn: Callable, desc: str) -> np.ndarray:
    parts = []
    with tqdm(total=total, desc=desc, unit="item") as bar:
        for batch in batches:
            parts.append(np.asarray(fn(batch), dtype=np.float32))
            bar.update(len(batch))
    features = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if len(features) != total:
        raise ValueError(f"{desc}: got {len(features)} feature rows, expected {total}")
    return features


def reference_features(
    reference: ReferenceSet, extractor: FeatureExtractor, cache_dir: str | Path, batch_size: int = 256
) -> np.ndarray:
    """Image features of a protocol's reference set (``bench.protocol.ReferenceSet``), cached.

    Keyed by the reference identity and count and the extractor id (not the batch size: features do not
    depend on it beyond float rounding on a GPU).

    Returns:
        float32 (reference.count, D).
    """
    key = {
        "kind": "reference-image-features",
        "reference": reference.identity,
        "count": reference.count,
        "extractor": extractor.id,
    }

    def compute():
        return _batched_features(
            reference.load_batches(batch_size), reference.count, extractor.image_features, "reference features"
        )

    return cached_features(cache_dir, key, compute)


def text_features_cached(
    texts: list[str], extractor: TextImageExtractor, cache_dir: str | Path, batch_size: int = 256
) -> np.ndarray:
    """``extractor.text_features(texts)``, cached under a hash of the exact strings and the extractor id.

    Returns:
        float32 (len(texts), D).
    """
    texts = list(texts)
    key = {
        "kind": "text-features",
        "texts_sha256": _sha256_text(_canonical_json(texts)),
        "count": len(texts),
        "extractor": extractor.id,
    }
    batches = (texts[i : i + batch_size] for i in range(0, len(texts), batch_size))
    return cached_features(
        cache_dir, key, lambda: _batched_features(batches, len(texts), extractor.text_features, "text features")
    )


# ---------------------------------------------------------------------------------------------------------------
# Shared plumbing

_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a file, computed once per (path, mtime, size): in this process, and across runs through
    ``cache_dir/file-sha256.json`` when given (ViT-g-14 is 5 GB, SD 2.1's weights as much again)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SHA256_CACHE:
        known_file = Path(cache_dir) / "file-sha256.json" if cache_dir else None
        text_key = "|".join(map(str, key))
        digest = (read_json(known_file) or {}).get(text_key) if known_file else None
        if digest is None:
            digest = _hash_file(path)
            if known_file:
                _remember_digest(known_file, text_key, digest)
        _SHA256_CACHE[key] = digest
    return _SHA256_CACHE[key]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remember_digest(known_file: Path, text_key: str, digest: str) -> None:
    """Add one digest to the shared file under an exclusive lock, re-reading it first: ranks and concurrent
    runs that share a cache folder each add theirs without dropping the others'."""
    known_file.parent.mkdir(parents=True, exist_ok=True)
    with open(known_file.with_name(known_file.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = read_json(known_file) or {}
        known[text_key] = digest
        atomic_write_text(known_file, json.dumps(known, indent=0))


_tf32_state = threading.Condition()
_tf32_users, _tf32_allowed, _tf32_saved = 0, None, None


@contextmanager
def tf32(allowed: bool):
    """Set cuBLAS and cuDNN TF32 explicitly around a forward; PyTorch's default lets cuDNN use TF32.

    The flags are process-global and feature workers run forwards from several threads, so forwards that want
    the same setting share it, one that wants the other waits, and the last to leave restores the saved flags."""
    global _tf32_users, _tf32_allowed, _tf32_saved
    with _tf32_state:
        _tf32_state.wait_for(lambda: _tf32_users == 0 or _tf32_allowed == allowed)
        if _tf32_users == 0:
            _tf32_saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
            _tf32_allowed = allowed
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_state:
            _tf32_users -= 1
            if _tf32_users == 0:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _tf32_saved
                _tf32_state.notify_all()


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3) RGB, got {images.dtype} {images.shape}")
    return images


def _forward_batches(items, batch_size: int, forward: Callable, allow_tf32: bool) -> np.ndarray:
    parts = []
    for start in range(0, len(items), batch_size):
        with torch.inference_mode(), tf32(allow_tf32):
            parts.append(forward(items[start : start + batch_size]).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # a vendored copy; the weights' sha256 still pins the model
        return "unknown"


def _weights_dir() -> Path | None:
    value = os.environ.get("BENCH_WEIGHTS_DIR")
    return Path(value).expanduser() if value else None


# ---------------------------------------------------------------------------------------------------------------
# Inception (clean-fid)

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CLEANFID_WEIGHTS_DIR = Path("./" if platform.system() == "Windows" else "/tmp")  # hard-coded in cleanfid.features
INCEPTION_MODES = {"clean": "PIL-bicubic-299-float32-outside", "adm": "BGR-resize-inside"}  # mode -> id part


def _missing_inception(detail: str) -> UserError:
    return UserError(
        f"Inception weights {detail}: pass --inception-weights FILE or put {INCEPTION_FILE} in $BENCH_WEIGHTS_DIR "
        f"(download: {INCEPTION_URL})"
    )


def resolve_inception_weights(weights: str | Path | None = None) -> Path:
    """Find NVIDIA's TorchScript Inception file, in this order:

    1. ``weights`` (the CLI's ``--inception-weights FILE``), which must exist;
    2. ``$BENCH_WEIGHTS_DIR/inception-2015-12-05.pt``;
    3. clean-fid's own location (``/tmp/inception-2015-12-05.pt``, ``./`` on Windows), downloading it there with
       clean-fid's downloader when online.

    Raises:
        UserError: when no file can be found or downloaded (one line naming the option and the variable).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise _missing_inception(f"not found at {path}")
        return path
    env_dir = _weights_dir()
    if env_dir is not None and (env_dir / INCEPTION_FILE).is_file():
        return env_dir / INCEPTION_FILE
    path = CLEANFID_WEIGHTS_DIR / INCEPTION_FILE
    if not path.is_file():
        from cleanfid import downloads_helper

        try:
            downloads_helper.check_download_inception(fpath=str(CLEANFID_WEIGHTS_DIR))
        except Exception as error:
            where = f"$BENCH_WEIGHTS_DIR={env_dir}" if env_dir else "$BENCH_WEIGHTS_DIR unset"
            raise _missing_inception(f"not found ({where}) and download failed ({_first_line(error)})") from None
    return path


def _load_inception(path: Path, resize_inside: bool):
    from cleanfid.inception_torchscript import InceptionV3W

    # InceptionV3W takes a folder and hard-codes the file name; a file under another name gets a symlink.
    # NVIDIA's weights exist only as TorchScript, so torch.jit.load's deprecation warning has no remedy here.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            if path.name == INCEPTION_FILE:
                return InceptionV3W(str(path.parent), download=False, resize_inside=resize_inside)
            with tempfile.TemporaryDirectory() as folder:
                os.symlink(path.resolve(), Path(folder) / INCEPTION_FILE)
                return InceptionV3W(folder, download=False, resize_inside=resize_inside)
    except Exception as error:
        raise _missing_inception(f"at {path} could not be loaded ({_first_line(error)})") from None


class InceptionExtractor(FeatureExtractor):
    """clean-fid's Inception-V3 pool3 features (2048-d), in mode ``"clean"`` or ``"adm"`` (see module doc).

    Args:
        weights: path of ``inception-2015-12-05.pt`` (else see ``resolve_inception_weights``).
        mode: ``"clean"`` (FID) or ``"adm"`` (precision/recall, the ADM-evaluator approximation).
        device: torch device, ``"cpu"`` by default.
        batch_size: images per forward.
        allow_tf32: allow TF32 on CUDA (off by default; recorded in ``id``).
    """

    def __init__(
        self, weights=None, mode: str = "clean", device: str = "cpu", batch_size: int = 64, allow_tf32: bool = False
    ):
        if mode not in INCEPTION_MODES:
            raise ValueError(f"mode must be one of {sorted(INCEPTION_MODES)}, got {mode!r}")
        from cleanfid.resize import make_resizer

        path = resolve_inception_weights(weights)
        self.mode, self.batch_size, self.allow_tf32 = mode, batch_size, allow_tf32
        self.device = torch.device(device)
        self.model = _load_inception(path, resize_inside=mode == "adm").to(self.device).eval()
        self._resize = make_resizer("PIL", False, "bicubic", (299, 299))
        cleanfid_version = _version("clean-fid")
        self.id = (
            f"inception-{mode}/clean-fid-{cleanfid_version}/{INCEPTION_MODES[mode]}/sha256={file_sha256(path)}"
            f"/tf32={int(allow_tf32)}"
        )

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        # Mirrors cleanfid.utils.ResizeDataset: float32 resizer output goes through ToTensor unscaled,
        # uint8 through ToTensor() * 255.
        if self.mode == "clean":
            return torch.from_numpy(np.stack([self._resize(image) for image in images])).permute(0, 3, 1, 2)
        bgr = np.ascontiguousarray(images[..., ::-1])  # the ADM evaluator read its PNGs with cv2.imread
        return torch.from_numpy(bgr).permute(0, 3, 1, 2).float().div(255) * 255

    def image_features(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        return _forward_batches(
            images, self.batch_size, lambda batch: self.model(self._to_tensor(batch).to(self.device)), self.allow_tf32
        )


def inception_extractor(**options) -> InceptionExtractor:
    """``"inception"``: clean-fid mode ``clean`` (the paper's FID)."""
    return InceptionExtractor(mode="clean", **options)


def inception_adm_extractor(**options) -> InceptionExtractor:
    """``"inception-adm"``: clean-fid ``legacy_tensorflow`` on BGR input (the paper's precision/recall)."""
    return InceptionExtractor(mode="adm", **options)


# ---------------------------------------------------------------------------------------------------------------
# CLIP (open_clip)

CLIP_MODEL = "ViT-g-14"
CLIP_PRETRAINED = "laion2b_s12b_b42k"
CLIP_PREFIX = "A photo depicts "
CLIP_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# open_clip applies a tag's preprocessing only when `pretrained` is the tag; we pass a file, so we pass these too.
_TAG_PREPROCESS = {
    "image_mean": "mean",
    "image_std": "std",
    "image_interpolation": "interpolation",
    "image_resize_mode": "resize_mode",
}


def clip_text(caption: str, prefix: str = CLIP_PREFIX) -> str:
    """The string whose embedding is scored against an image: ``prefix + caption``.

    ``ClipExtractor.text_features`` encodes exactly what it is given; the caller applies the protocol's
    ``clip_prefix`` with this helper (SwiftBrush v2 / GigaGAN / DMD2 use ``"A photo depicts "``).
    """
    return prefix + caption


def clip_weights_names(model: str, tag: str) -> tuple[str, str]:
    """File names looked up in ``$BENCH_WEIGHTS_DIR``, e.g. ``open_clip_ViT-g-14_laion2b_s12b_b42k.safetensors``
    then ``....bin``: the tag's ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``, renamed."""
    stem = f"open_clip_{model}_{tag}"
    return f"{stem}.safetensors", f"{stem}.bin"


def _missing_clip(model: str, tag: str | None, detail: str) -> UserError:
    import open_clip

    name = clip_weights_names(model, tag)[1] if tag else f"open_clip_{model}_<tag>.bin"
    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "").strip("/") if tag else ""
    source = f" (download: https://huggingface.co/{hub})" if hub else ""
    return UserError(
        f"open_clip weights for {model}/{tag or 'file'} {detail}: pass --clip-weights FILE or put {name} "
        f"in $BENCH_WEIGHTS_DIR{source}"
    )


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".bin", ".pt", ".pth", ".safetensors"))


def resolve_clip_weights(
    model: str = CLIP_MODEL, pretrained: str | None = CLIP_PRETRAINED, weights: str | Path | None = None
) -> tuple[Path, str | None]:
    """Find open_clip weights, in this order:

    1. ``weights`` (the CLI's ``--clip-weights FILE``), or ``pretrained`` when it is a file path; must exist;
    2. ``$BENCH_WEIGHTS_DIR/open_clip_<model>_<tag>.safetensors`` or ``.bin`` (see ``clip_weights_names``);
    3. open_clip's own download for the tag (its Hugging Face cache), when online or already cached.

    Returns:
        ``(path, tag)``; ``tag`` is None when only a file was given.

    Raises:
        UserError: unknown model or tag, or no weights found (one line naming the option and the variable).
    """
    import open_clip

    if open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3)
        raise UserError(f"unknown open_clip model {model!r}; close matches: {close} (see open_clip.list_models())")
    tag = pretrained
    is_tag = tag is not None and bool(open_clip.get_pretrained_cfg(model, tag))
    if tag is not None and not is_tag and (Path(tag).expanduser().is_file() or _looks_like_path(tag)):
        weights, tag = weights or tag, None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise _missing_clip(model, tag, f"not found at {path}")
        return path, tag
    if tag is None:
        raise _missing_clip(model, tag, "not given")
    if not is_tag:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise UserError(
            f"unknown open_clip pretrained tag {tag!r} for {model}; known: {tags}, or pass --clip-weights FILE"
        )
    env_dir = _weights_dir()
    for name in clip_weights_names(model, tag) if env_dir is not None else ():
        if (env_dir / name).is_file():
            return env_dir / name, tag
    try:
        return Path(open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(model, tag))), tag
    except Exception as error:
        raise _missing_clip(model, tag, f"not found and download failed ({_first_line(error)})") from None


class ClipExtractor(TextImageExtractor):
    """open_clip image and text embeddings (float32, unnormalised; ``bench.metrics.clipscore`` normalises).

    Images: uint8 NHWC at the metric resolution (256 px for COCO) -> PIL -> open_clip's validation transform
    (the third value of ``create_model_and_transforms``) -> ``encode_image``. Texts: encoded exactly as given.

    Args:
        model: any open_clip model name (default ``ViT-g-14``).
        pretrained: an open_clip tag (default ``laion2b_s12b_b42k``) or a local checkpoint file. A tag also
            sets the preprocessing and QuickGELU as open_clip does for that tag, even when ``weights`` is given.
        weights: a local checkpoint file (the CLI's ``--clip-weights FILE``); see ``resolve_clip_weights``.
        device: torch device, ``"cpu"`` by default.
        batch_size: images or texts per forward.
        allow_tf32: allow TF32 on CUDA (off by default; recorded in ``id``).
        precision: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``: the dtype of the weights and the image input
            (features are returned as float32 whatever it is); a precision other than fp32 is recorded in ``id``.
    """

    def __init__(
        self,
        model: str = CLIP_MODEL,
        pretrained: str | None = CLIP_PRETRAINED,
        weights=None,
        device: str = "cpu",
        batch_size: int = 64,
        allow_tf32: bool = False,
        precision: str = "fp32",
    ):
        import open_clip

        path, tag = resolve_clip_weights(model, pretrained, weights)
        cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
        overrides = {argument: cfg[name] for argument, name in _TAG_PREPROCESS.items() if name in cfg}
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model,
                pretrained=str(path),
                precision="fp32",
                device="cpu",
                force_quick_gelu=cfg.get("quick_gelu", False),
                **overrides,
            )
            tokenizer = open_clip.get_tokenizer(model)
        except Exception as error:
            raise _missing_clip(model, tag, f"at {path} could not be loaded ({_first_line(error)})") from None
        weights_id = f"open_clip-{open_clip.__version__}/{model}/{tag or 'file'}/sha256={file_sha256(path)}"
        self._setup(clip, preprocess, tokenizer, weights_id, device, batch_size, allow_tf32, precision)

    @classmethod
    def from_components(
        cls,
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        id: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        allow_tf32: bool = False,
        precision: str = "fp32",
    ) -> "ClipExtractor":
        """Wrap an already-built open_clip ``(model, preprocess, tokenizer)`` (tests, the demo world).

        ``id`` defaults to a sha256 of the model's state dict, so different weights never share a cache entry.
        """
        if id is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            id = f"open_clip/{type(model).__name__}/state_dict-sha256={digest.hexdigest()}"
        self = cls.__new__(cls)
        self._setup(model, preprocess, tokenizer, id, device, batch_size, allow_tf32, precision)
        return self

    def _setup(self, model, preprocess, tokenizer, weights_id, device, batch_size, allow_tf32, precision) -> None:
        if precision not in CLIP_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(CLIP_PRECISIONS)}, got {precision!r}")
        self.device, self.dtype, self.precision = torch.device(device), CLIP_PRECISIONS[precision], precision
        self.model = model.to(self.device, self.dtype).eval()
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.batch_size, self.allow_tf32 = batch_size, allow_tf32
        transform = _sha256_text(repr(preprocess))[:16]
        self.id = f"clip/{weights_id}/preprocess-sha256={transform}/tf32={int(allow_tf32)}"
        if precision != "fp32":  # fp32 ids stay as they were, so existing caches remain valid
            self.id += f"/precision={precision}"

    def image_features(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        def encode(batch):
            return self.model.encode_image(
                torch.stack([self.preprocess(Image.fromarray(im)) for im in batch]).to(self.device, self.dtype)
            )

        return _forward_batches(_check_images(images), self.batch_size, encode, self.allow_tf32)

    def text_features(self, texts: list[str]) -> np.ndarray:
        def encode(batch):
            return self.model.encode_text(self.tokenizer(list(batch)).to(self.device))

        return _forward_batches(list(texts), self.batch_size, encode, self.allow_tf32)


register_extractor("inception", inception_extractor)
register_extractor("inception-adm", inception_adm_extractor)
register_extractor("clip", ClipExtractor)
