"""Atomic files and the sample store: one folder per (run, model) holding atomic shards of per-sample features.

A shard covers sample indices [s * shard_size, (s + 1) * shard_size) and is an ``.npz`` written to a
temporary name and renamed, so it is either complete or absent. Every shard carries the store's key, a hash
of its fingerprint: everything that determines the samples and their stored features (model and weights
location, sampler, seed, dtype actually used, device, batch size, compile, captions, metric resolution, extractor
ids), and nothing that only the metrics use (the reference images key the metric caches, not the samples). A rerun
keeps the shards that load and match and regenerates the missing or unreadable ones; a store made with other
settings is refused, never overwritten.

Temporary files are named ``.<name>.<pid>.<random>.tmp``; ``remove_stale_temporaries`` deletes those whose
process is gone (a killed write), so nothing a kill leaves behind outlives the next run.
"""

import hashlib
import json
import os
import re
import tempfile
import zipfile
from contextlib import suppress
from pathlib import Path

import numpy as np

from bench.errors import UserError


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


# Read once, at import (os.umask can only be read by setting it, which would race with writer threads).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared like any file the user writes
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), lambda f: f.write(text.encode()))


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete the temporary files of atomic writes whose writing process is gone; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            with suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def read_json(path: Path) -> dict | None:
    """A small JSON file's contents, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def changed_settings(recorded: dict, wanted: dict) -> list[str]:
    """The top-level keys whose values differ between two settings dicts, sorted."""
    return sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))


def write_npz(file, arrays: dict) -> None:
    """``np.savez`` with a fixed member date: the same arrays give the same bytes, so a resumed run's shards are
    byte-identical to an uninterrupted run's."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w",
                              force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def read_store(root: Path) -> dict | None:
    """A store folder's ``store.json`` (key, fingerprint, weights), or None when it is missing or unreadable."""
    info = read_json(Path(root) / "store.json")
    return info if isinstance(info, dict) and "key" in info else None


class SampleStore:
    def __init__(self, root: str | Path, n: int, shard_size: int, fingerprint: dict):
        self.root, self.n, self.shard_size = Path(root), n, shard_size
        self.fingerprint = fingerprint
        self.key = fingerprint_hash(fingerprint)
        self.num_shards = -(-n // shard_size)

    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}.npz"

    def shard_indices(self, shard: int) -> np.ndarray:
        return np.arange(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n))

    def claim(self, weights: dict | None = None) -> None:
        """Write the store's fingerprint, or refuse a folder that holds samples made otherwise.

        ``weights`` (the model's weights identity, None: not checked) is recorded beside the fingerprint rather
        than in it, so a store made without it adopts it. Temporary files of killed writes are removed first; an
        unreadable ``store.json`` that no shard depends on is treated as missing.
        """
        remove_stale_temporaries(self.root)
        remove_stale_temporaries(self.root / "images")
        info = self.root / "store.json"
        existing = read_store(self.root)
        if existing is None and info.exists() and any(self.root.glob("shard-*.npz")):
            raise UserError(f"{info} is unreadable and the shards beside it depend on it: restore it, or delete "
                            f"{self.root} to regenerate that model")
        if existing and existing.get("key") != self.key:
            changed = changed_settings(existing.get("fingerprint") or {}, self.fingerprint)
            raise UserError(f"{self.root} holds samples made with other settings ({', '.join(changed)} differ): "
                            "pass a new --out folder, or delete that folder to regenerate")
        if existing and weights is not None and existing.get("weights") not in (None, weights):
            raise UserError(f"{self.root} holds samples of other weights at the same location ("
                            f"{', '.join(changed_settings(existing['weights'], weights))} changed since): pass a new "
                            "--out folder, or delete that folder to regenerate")
        if existing is None or (weights is not None and existing.get("weights") is None):
            atomic_write_text(info, json.dumps({"key": self.key, "fingerprint": self.fingerprint, "weights": weights},
                                               indent=1, default=str))

    def weights(self) -> dict | None:
        """The weights identity the store's samples were made with (None when not recorded)."""
        return (read_store(self.root) or {}).get("weights")

    def load_shard(self, shard: int) -> dict | None:
        """The shard's arrays, or None when it is missing, truncated, corrupt or from other settings."""
        path = self.shard_path(shard)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        if str(arrays.get("store_key")) != self.key or not np.array_equal(arrays.get("indices"),
                                                                          self.shard_indices(shard)):
            return None
        return arrays

    def write_shard(self, shard: int, arrays: dict) -> None:
        assert np.array_equal(arrays["indices"], self.shard_indices(shard))
        atomic_write_bytes(self.shard_path(shard), lambda f: write_npz(f, {"store_key": np.array(self.key), **arrays}))

    def write_features(self, shard: int, arrays: dict) -> None:
        """A shard from ``FeaturePipeline``'s arrays: the finite mask and one ``features_<role>`` per extractor."""
        features = {f"features_{role}": v for role, v in arrays.items() if role != "finite"}
        self.write_shard(shard, {"indices": self.shard_indices(shard), "finite": arrays["finite"], **features})

    def pending(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """This process's shards that still need generating (shard s belongs to rank s % world_size)."""
        return [s for s in range(rank, self.num_shards, world_size) if self.load_shard(s) is None]

    def gather(self) -> dict[str, np.ndarray]:
        """All shards concatenated in sample order; every shard must be complete."""
        shards = [self.load_shard(s) for s in range(self.num_shards)]
        missing = [s for s, arrays in enumerate(shards) if arrays is None]
        if missing:
            raise UserError(f"{self.root}: shards {missing[:5]} are missing or unreadable: "
                            "rerun without --metrics-only")
        keys = [k for k in shards[0] if k != "store_key"]
        return {k: np.concatenate([arrays[k] for arrays in shards]) for k in keys}
