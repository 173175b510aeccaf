"""Content digests of files, weight folders and settings: what every cache key and store identity is made of.

A file's sha256 is computed once per (path, mtime, size): in this process, and across runs and ranks through an
optional ``<cache_dir>/file-sha256.json`` (ViT-g-14's weights are 5 GB, SD 2.1's as much again), which is merged
under a lock so that processes sharing a cache folder never drop each other's entries.
"""

import fcntl
import hashlib
import json
from pathlib import Path

from bench.store import atomic_write_text

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value) -> str:
    """The one JSON spelling of a value (sorted keys, no spaces, ASCII), so equal settings hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a file, computed once per (path, mtime, size); remembered in ``cache_dir`` when given."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        known_file = Path(cache_dir) / "file-sha256.json" if cache_dir else None
        text_key = "|".join(map(str, key))
        digest = _read_known(known_file).get(text_key) if known_file else None
        if digest is None:
            digest = _hash_file(path)
            if known_file:
                _remember(known_file, text_key, digest)
        _DIGESTS[key] = digest
    return _DIGESTS[key]


def folder_sha256(folder: str | Path, cache_dir: str | Path | None = None) -> str | None:
    """sha256 over the weight files of a local folder (relative names and each file's sha256); None when
    ``folder`` is not a local folder (a hub id)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(file_sha256(file, cache_dir).encode())
    return digest.hexdigest()


def locations_sha256(*locations: str | Path | None) -> str | None:
    """One digest over local files and weight folders (hub ids and None contribute nothing); None if none is local."""
    digests = []
    for location in locations:
        path = Path(location) if location else None
        if path is not None and path.is_file():
            digests.append(file_sha256(path))
        elif path is not None and path.is_dir():
            digests.append(folder_sha256(path))
    return hashlib.sha256("".join(d for d in digests if d).encode()).hexdigest() if any(digests) else None


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_known(known_file: Path) -> dict:
    try:
        known = json.loads(known_file.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remember(known_file: Path, text_key: str, digest: str) -> None:
    """Add one digest under an exclusive lock, re-reading the file first: ranks and concurrent runs that share a
    cache folder each add theirs without dropping the others'."""
    known_file.parent.mkdir(parents=True, exist_ok=True)
    with open(known_file.with_name(known_file.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = _read_known(known_file)
        known[text_key] = digest
        atomic_write_text(known_file, json.dumps(known, indent=0))
