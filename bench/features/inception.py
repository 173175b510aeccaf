"""clean-fid's Inception-V3 pool3 features (2048-d): the FID of SwiftBrush v2, GigaGAN and DMD2.

- ``"inception"``: clean-fid ``mode="clean"`` exactly (clean-fid 0.1.35): its PIL-bicubic float resizer to 299 x 299
  per image, then its TorchScript wrapper ``InceptionV3W``.
- ``"inception-adm"``: clean-fid ``mode="legacy_tensorflow"`` (resize inside the network) fed BGR images: our
  approximation of the ADM evaluator that SwiftBrush v2's precision/recall used (TF graph, ``cv2.imread``).

Weights are never fetched silently from an unexpected place: see ``resolve_inception_weights``.
"""

import os
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError
from bench.features.base import (
    FeatureExtractor,
    check_images,
    first_line,
    forward_batches,
    package_version,
    weights_dir,
)
from bench.hashing import file_sha256

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
    env_dir = weights_dir()
    if env_dir is not None and (env_dir / INCEPTION_FILE).is_file():
        return env_dir / INCEPTION_FILE
    path = CLEANFID_WEIGHTS_DIR / INCEPTION_FILE
    if not path.is_file():
        from cleanfid import downloads_helper

        try:
            downloads_helper.check_download_inception(fpath=str(CLEANFID_WEIGHTS_DIR))
        except Exception as error:
            where = f"$BENCH_WEIGHTS_DIR={env_dir}" if env_dir else "$BENCH_WEIGHTS_DIR unset"
            raise _missing_inception(f"not found ({where}) and download failed ({first_line(error)})") from None
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
        raise _missing_inception(f"at {path} could not be loaded ({first_line(error)})") from None


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
        cleanfid_version = package_version("clean-fid")
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
        images = check_images(images)
        return forward_batches(
            images, self.batch_size, lambda batch: self.model(self._to_tensor(batch).to(self.device)), self.allow_tf32
        )


def inception_extractor(**options) -> InceptionExtractor:
    """``"inception"``: clean-fid mode ``clean`` (the paper's FID)."""
    return InceptionExtractor(mode="clean", **options)


def inception_adm_extractor(**options) -> InceptionExtractor:
    """``"inception-adm"``: clean-fid ``legacy_tensorflow`` on BGR input (the paper's precision/recall)."""
    return InceptionExtractor(mode="adm", **options)
