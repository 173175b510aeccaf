"""Results out: table.csv, the markdown report beside the paper's Table 1, image grids, manifest."""

import dataclasses
import datetime
import importlib.metadata
import json
import platform
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.card import Card, protocol_card
from bench.card import markdown as card_markdown
from bench.registry import PAPER_TABLE1
from bench.store import atomic_write_bytes, atomic_write_text

METRICS = ["fid", "precision", "recall", "clip_score"]
PACKAGES = ["torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "clean-fid", "torch-fidelity",
            "open_clip_torch", "numpy", "scipy", "pillow", "pandas"]


class PngWriter:
    """Writes 512 px PNGs from a background pool: encoding costs ~40 ms of a core per image.

    ``submit`` blocks while ``max_pending`` images wait, so a generator faster than the encoders is slowed
    down instead of filling host memory with pinned batches.
    """

    def __init__(self, folder: Path, workers: int = 4, max_pending: int = 512):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pool, self.futures = ThreadPoolExecutor(workers), {}
        self.slots = threading.BoundedSemaphore(max_pending)

    def _write(self, image: np.ndarray, index: int) -> None:
        try:
            atomic_write_bytes(self.folder / f"{index:08d}.png",
                               lambda f: Image.fromarray(image).save(f, format="PNG"))
        finally:
            self.slots.release()

    def submit(self, images: np.ndarray, indices) -> None:
        for image, index in zip(images, indices):
            self.slots.acquire()
            self.futures[int(index)] = self.pool.submit(self._write, image, int(index))

    def wait(self, indices) -> None:
        """Until the PNGs of ``indices`` are on disk (raises a write's error)."""
        for index in indices:
            future = self.futures.pop(int(index), None)
            if future is not None:
                future.result()

    def close(self) -> None:
        self.wait(list(self.futures))
        self.pool.shutdown()


def _git_commit() -> str:
    try:
        here = Path(__file__).parent  # this checkout's commit, wherever the command runs from
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def manifest(config, suite, specs, stores, extractor_ids, timings, device, world) -> dict:
    protocol = suite.protocol
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "args": dataclasses.asdict(config),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "device": {"name": device_name(device), "type": device, "processes": world},
        "protocol": {"name": protocol.name, "hash": protocol.hash(), "n": len(protocol.captions),
                     "resize": protocol.resize, "metric_resolution": protocol.metric_resolution,
                     "reference": {"identity": protocol.reference.identity, "count": protocol.reference.count},
                     "clip_prefix": protocol.clip_prefix},
        "protocol_card": protocol_card(suite, config, specs, stores).to_dict(),
        "extractors": extractor_ids,
        "seed": config.seed,
        "models": {spec.name: {"spec": spec.to_dict(), "store": stores[spec.name].key,
                               "provenance": stores[spec.name].fingerprint.get("provenance"),
                               "generation": stores[spec.name].fingerprint.get("generation"),
                               "weights": stores[spec.name].weights()} for spec in specs},
        "timings_s": timings,
    }


def table(specs, results: dict) -> pd.DataFrame:
    rows = [{"model": spec.name, **{k: results[spec.name][k] for k in ["n_samples", *METRICS]},
             **{k: v for k, v in results[spec.name].items() if k not in ["n_samples", *METRICS]}} for spec in specs]
    return pd.DataFrame(rows)


def _fmt(value, digits=2) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(specs, results: dict) -> str:
    """Our numbers beside the paper's Table 1 row for the same model, and the difference."""
    beside_paper = any(spec.paper_row in PAPER_TABLE1 for spec in specs)
    header = (f"{m} (ours / paper / Δ)" if beside_paper else m for m in METRICS)
    lines = ["| model | N | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(METRICS)]
    for spec in specs:
        ours, paper = results[spec.name], PAPER_TABLE1.get(spec.paper_row or "", {})
        cells = []
        for metric in METRICS:
            digits = 2 if metric == "fid" else 3
            if metric in paper:
                cells.append(f"{_fmt(ours[metric], digits)} / {_fmt(paper[metric])} / "
                             f"{ours[metric] - paper[metric]:+.{digits}f}")
            else:
                cells.append(_fmt(ours[metric], digits))
        lines.append(f"| {spec.name} | {ours['n_samples']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_grid(out_png: Path, specs, stores, captions) -> Path | None:
    """One row per model, the same prompts and seeds in every column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = {s.name: np.load(stores[s.name].root / "grid.npz") for s in specs
             if (stores[s.name].root / "grid.npz").exists()}
    if not grids:
        return None
    columns = min(len(grid["indices"]) for grid in grids.values())  # a model left out of this run may keep more
    fig, axes = plt.subplots(len(grids), columns, figsize=(1.6 * columns, 1.7 * len(grids)), squeeze=False)
    for row, (name, grid) in enumerate(grids.items()):
        for col in range(columns):
            ax = axes[row][col]
            image = grid["images"][col]
            ax.imshow(image, interpolation="nearest" if image.shape[0] < 64 else "lanczos")
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
            if row == 0:
                ax.set_title(captions[int(grid["indices"][col])][:28], fontsize=5)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_png, lambda f: fig.savefig(f, format="png", dpi=150))
    plt.close(fig)
    return out_png


def write_all(out: Path, report_path: Path, suite, specs, results, stores, manifest: dict) -> None:
    protocol = suite.protocol
    frame = table(specs, results)
    atomic_write_text(out / "table.csv", frame.to_csv(index=False))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str))
    grid = write_grid(report_path.with_suffix("") / "grid.png", specs, stores, protocol.captions)
    card = Card(**manifest["protocol_card"])
    parts = [
        f"# {suite.title}",
        f"Protocol `{protocol.name}` (hash `{protocol.hash()[:12]}`), {len(protocol.captions)} samples per model, "
        f"reference {protocol.reference.count} images. CLIP score is a raw cosine. "
        f"Extractors: " + ", ".join(f"{r} `{i}`" for r, i in manifest["extractors"].items()) + ".",
        markdown_table(specs, results),
    ]
    if card.deviations:
        parts.append(f"⚠ {len(card.deviations)} departure(s) from the paper's protocol: see the protocol card.")
    if suite.notes:
        parts.append(suite.notes)
    if grid:
        parts.append(f"![samples]({grid.relative_to(report_path.parent).as_posix()})")
    parts.append(card_markdown(card))
    parts.append(f"Manifest: `{out / 'manifest.json'}` (git {manifest['git_commit'][:12]}, device "
                 f"{manifest['device']['name']}, seed {manifest['seed']}).")
    atomic_write_text(report_path, "\n\n".join(parts) + "\n")
