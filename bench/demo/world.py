"""Train (once) and cache everything the demo world needs, with fixed seeds.

Layout of ``root`` (default ``results/demo``)::

    tokenizer/                     the real CLIP tokenizer (bench.tokenizer.write_clip_tokenizer)
    classifier.safetensors         demo-classifier (FID / precision / recall features)
    contrastive.safetensors        demo-contrastive (CLIP-score stand-in)
    contrastive_loss.safetensors   demo-contrastive-loss (CLIP-loss stand-in: another seed and width)
    teacher/                       StableDiffusionPipeline folder of the teacher (EMA weights)
    turbo/                         pipeline folder of the regression ("SD Turbo") student

Every artefact is written to a temporary name and renamed into place when complete; each records the
settings that made it (``bench_demo.json`` in folders, safetensors metadata in files), so a second call
trains nothing and a root trained with other settings (e.g. the quick CI world) is refused, not mixed.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.errors import UserError


@dataclass(frozen=True)
class DemoWorld:
    root: Path
    tokenizer: Path
    teacher: Path
    turbo: Path
    classifier: Path
    contrastive: Path
    contrastive_loss: Path


def world_paths(root: str | Path = "results/demo") -> DemoWorld:
    """Where each artefact of the world in ``root`` lives (nothing is checked or trained)."""
    root = Path(root)
    return DemoWorld(root=root, tokenizer=root / "tokenizer", teacher=root / "teacher", turbo=root / "turbo",
                     classifier=root / "classifier.safetensors", contrastive=root / "contrastive.safetensors",
                     contrastive_loss=root / "contrastive_loss.safetensors")


# --- settings ------------------------------------------------------------------------------------------------


def teacher_config(quick: bool = False):
    from bench.demo.teacher import TeacherConfig

    # Small batches, more updates: they learn the text conditioning at this cost, large ones do not (docs/demo.md).
    return TeacherConfig(steps=500, batch_size=32, warmup=50) if quick else TeacherConfig()


def regression_config(quick: bool = False):
    from bench.demo.regression import RegressionConfig

    # Exercises the code path only: on a few hundred pairs the student memorises them (docs/demo.md).
    return RegressionConfig(pairs=256, steps=100) if quick else RegressionConfig()


def classifier_config(quick: bool = False):
    from bench.demo.extractors import ClassifierConfig

    return ClassifierConfig(steps=300) if quick else ClassifierConfig()


def contrastive_config(quick: bool = False, loss: bool = False):
    """The evaluation model, or (``loss=True``) the separate model for training losses."""
    from bench.demo.extractors import ContrastiveConfig

    return ContrastiveConfig(width=24, seed=2) if loss else ContrastiveConfig()


# --- helpers -------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    from bench.demo.teacher import log_stderr

    log_stderr(message)


def _flatten(value, prefix: str = "") -> dict:
    if not isinstance(value, dict):
        return {prefix or "settings": value}
    flat = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _refuse(path: Path, found, wanted) -> UserError:
    found, wanted = _flatten(found), _flatten(wanted)
    diff = ", ".join(f"{k}={found.get(k)!r} (now {wanted.get(k)!r})" for k in sorted(set(found) | set(wanted))
                     if found.get(k) != wanted.get(k))
    return UserError(f"{path} was made with other settings ({diff}): delete it to retrain it, "
                     "or use another demo root (the quick and the full world need separate roots)")


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}")


def install_folder(tmp: Path, final: Path) -> None:
    """Move a complete temporary folder into place; a leftover incomplete folder is replaced."""
    if final.exists():
        from bench.demo.teacher import MARKER

        if (final / MARKER).exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
            return
        shutil.rmtree(final)
    os.rename(tmp, final)


def folder_ready(folder: Path, key: dict, files: tuple[str, ...] = ()) -> bool:
    """True when ``folder`` holds ``files`` and a marker made with ``key``; a marker with another key is refused,
    a missing or unreadable one means the folder is built again. (The demo students use it too.)"""
    from bench.demo.teacher import MARKER

    if not all((folder / f).exists() for f in files):
        return False
    try:
        found = json.loads((folder / MARKER).read_text()).get("key")
    except (OSError, ValueError):
        return False
    if found != key:
        raise _refuse(folder, found, key)
    return True


def _file_ready(path: Path, config) -> bool:
    from bench.demo.extractors import read_metadata

    if not path.exists():
        return False
    found = json.loads(read_metadata(path).get("config", "null"))
    if found != asdict(config):
        raise _refuse(path, found, asdict(config))
    return True


def _add_key(folder: Path, key: dict) -> None:
    from bench.demo.teacher import MARKER

    marker = json.loads((folder / MARKER).read_text())
    marker["key"] = key
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


# --- artefacts -----------------------------------------------------------------------------------------------


def ensure_tokenizer(root: str | Path = "results/demo") -> Path:
    path = world_paths(root).tokenizer
    if (path / "vocab.json").exists() and (path / "merges.txt").exists() and (path / "tokenizer_config.json").exists():
        return path
    from bench.tokenizer import write_clip_tokenizer

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    write_clip_tokenizer(tmp)
    install_folder(tmp, path)
    return path


def ensure_classifier(root: str | Path = "results/demo", quick: bool = False) -> Path:
    path, config = world_paths(root).classifier, classifier_config(quick)
    if not _file_ready(path, config):
        from bench.demo.extractors import train_classifier

        train_classifier(path, config, log=_log)
    return path


def ensure_contrastive(root: str | Path = "results/demo", quick: bool = False, loss: bool = False) -> Path:
    paths = world_paths(root)
    path, config = (paths.contrastive_loss if loss else paths.contrastive), contrastive_config(quick, loss)
    if not _file_ready(path, config):
        from transformers import CLIPTokenizer

        from bench.demo.extractors import train_contrastive

        tokenizer = CLIPTokenizer.from_pretrained(ensure_tokenizer(root))
        train_contrastive(path, tokenizer, config, log=_log)
    return path


_PIPELINE_FILES = ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                   "tokenizer/vocab.json", "scheduler/scheduler_config.json", "vae/config.json")


def _ensure_pipeline(path: Path, key: dict, train) -> Path:
    """``path`` when it holds a pipeline made with ``key``; otherwise ``train(folder)`` into a temporary sibling,
    then the key is added and the folder moved into place."""
    if not folder_ready(path, key, _PIPELINE_FILES):
        tmp = _temp_sibling(path)
        try:
            train(tmp)
            _add_key(tmp, key)
            install_folder(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_teacher(root: str | Path = "results/demo", quick: bool = False) -> Path:
    path, config = world_paths(root).teacher, teacher_config(quick)

    def train(folder: Path) -> None:
        from bench.demo.teacher import train_teacher

        # Each batch split over two processes on two cores: the same updates, in less time (docs/demo.md).
        train_teacher(folder, ensure_tokenizer(root), config, processes=min(2, os.cpu_count() or 1))

    return _ensure_pipeline(path, dict(teacher=asdict(config)), train)


def ensure_turbo(root: str | Path = "results/demo", quick: bool = False, pairs: dict | None = None) -> Path:
    """demo-turbo, trained on ``pairs`` (``bench.demo.regression.make_pairs`` of this root's teacher and
    ``regression_config(quick)``, for all pairs or the first ones) and on the pairs made here that it lacks."""
    from bench.hashing import file_sha256

    teacher = ensure_teacher(root, quick)
    path, config = world_paths(root).turbo, regression_config(quick)

    def train(folder: Path) -> None:
        from bench.demo.regression import train_regression

        train_regression(teacher, folder, config, pairs=pairs)

    key = dict(regression=asdict(config), teacher_unet_sha256=file_sha256(teacher / _PIPELINE_FILES[1]))
    return _ensure_pipeline(path, key, train)


def ensure_world(root: str | Path = "results/demo", quick: bool = False, turbo: bool = True) -> DemoWorld:
    """Everything of the demo world under ``root``, training (with fixed seeds) only what is missing.

    ``quick=True`` is the CI variant (about 2 minutes on 2 cores): far fewer steps, the same code paths.
    A root holds one variant; asking for the other raises ``UserError``. ``turbo=False`` leaves demo-turbo to
    ``bench.demo.students.ensure_students``, which trains it while model A trains beside it.
    """
    from bench.demo.teacher import MARKER

    start, paths = time.time(), world_paths(root)
    found = all(path.exists() for path in (paths.tokenizer, paths.classifier, paths.contrastive,
                                           paths.contrastive_loss, paths.teacher / MARKER))
    ensure_tokenizer(root)
    ensure_classifier(root, quick)
    ensure_contrastive(root, quick)
    ensure_contrastive(root, quick, loss=True)
    ensure_teacher(root, quick)
    if turbo:
        found = found and (paths.turbo / MARKER).exists()
        ensure_turbo(root, quick)
    if not found:  # a run that found everything says nothing
        _log(f"demo world ready in {root} ({time.time() - start:.0f} s{', quick' if quick else ''})")
    return paths
