"""Results out: table.csv, the markdown report beside the paper's Table 1, image grids, manifest."""

import dataclasses
import datetime
import importlib.metadata
import json
import os
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
from bench.scores import COCO
from bench.store import atomic_write_bytes, atomic_write_text, read_json

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
                     "reference": {"identity": protocol.reference.identity, "count": protocol.reference.count}
                     if protocol.reference else None,
                     "clip_prefix": protocol.clip_prefix},
        "protocol_card": protocol_card(suite, config, specs, stores).to_dict(),
        "extractors": extractor_ids,
        "seed": config.seed,
        "models": {spec.name: {"spec": spec.to_dict(), "store": stores[spec.name].key,
                               "provenance": stores[spec.name].fingerprint.get("provenance"),
                               "generation": stores[spec.name].fingerprint.get("generation"),
                               "weights": stores[spec.name].weights(),
                               # interval settings (resamples, their seed, methods), FID∞ fit, diversity subset
                               "details": (read_json(stores[spec.name].root / "metrics.json") or {}).get("details")}
                   for spec in specs},
        "timings_s": timings,
    }


def table(specs, results: dict, columns=("fid", "precision", "recall", "clip_score")) -> pd.DataFrame:
    """One row per model: its name, N and the suite's columns first, then every other result."""
    first = ["n_samples", *columns]
    rows = [{"model": spec.name, **{k: results[spec.name].get(k) for k in first},
             **{k: v for k, v in results[spec.name].items() if k not in first}} for spec in specs]
    return pd.DataFrame(rows)


def _fmt(value, digits=2) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(specs, results: dict, scorer=COCO) -> str:
    """Our numbers (with their interval when measured) beside the paper's row for the same model, and the
    difference."""
    beside_paper = any(spec.paper_row in scorer.paper for spec in specs)
    header = (f"{m} (ours / paper / Δ)" if beside_paper else m for m in scorer.columns)
    lines = ["| model | N | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(scorer.columns)]
    for spec in specs:
        ours, paper = results[spec.name], scorer.paper.get(spec.paper_row or "", {})
        cells = []
        for metric in scorer.columns:
            digits = scorer.digits.get(metric, 3)
            cell = _fmt(ours.get(metric), digits)
            if ours.get(f"{metric}_lo") is not None:
                cell += f" [{_fmt(ours[f'{metric}_lo'], digits)}, {_fmt(ours[f'{metric}_hi'], digits)}]"
            if metric in paper and ours.get(metric) is not None:
                cell += f" / {_fmt(paper[metric])} / {ours[metric] - paper[metric]:+.{digits}f}"
            cells.append(cell)
        lines.append(f"| {spec.name} | {ours['n_samples']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_lines(specs, out: Path, columns) -> str | None:
    """The pairs of rows whose 95% intervals overlap, per metric: differences between them are within noise."""
    marks = {spec.name: (read_json(out / spec.name / "metrics.json") or {}).get("within_noise_of", {})
             for spec in specs}
    lines = []
    for column in columns:
        pairs = sorted({tuple(sorted((a, b))) for a, row in marks.items() for b in row.get(column, [])})
        if pairs:
            lines.append(f"- {column}: " + ", ".join(f"{a} ≈ {b}" for a, b in pairs))
    return "Within noise (95% intervals overlap):\n" + "\n".join(lines) if lines else None


def seeds_table(specs, results: dict, scorer) -> str | None:
    """Each metric's mean ± standard deviation over the noise seeds (``--seeds``), beside the interval."""
    rows = [spec for spec in specs if results[spec.name].get("seeds")]
    if not rows:
        return None
    lines = ["Across noise seeds (mean ± std):", "", "| model | seeds | " + " | ".join(scorer.columns) + " |",
             "|---|---|" + "---|" * len(scorer.columns)]
    for spec in rows:
        row = results[spec.name]
        cells = [f"{_fmt(row.get(f'{c}_seeds_mean'), scorer.digits.get(c, 3))} ± "
                 f"{_fmt(row.get(f'{c}_seeds_std'), scorer.digits.get(c, 3))}" for c in scorer.columns]
        lines.append(f"| {spec.name} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diversity_table(specs, results: dict, out: Path, captions) -> str | None:
    """Per-prompt diversity (``--diversity K``) with its interval, and each model's least and most diverse
    prompts."""
    rows = [spec for spec in specs if results[spec.name].get("diversity_clip") is not None]
    if not rows:
        return None
    lines = ["Per-prompt diversity (mean pairwise distance of the K samples of a prompt; CLIP: 1 − cos, Inception: "
             "Euclidean):", "", "| model | CLIP | Inception | least diverse prompt | most diverse prompt |",
             "|---|---|---|---|---|"]
    for spec in rows:
        row = results[spec.name]
        prompts = (read_json(out / spec.name / "metrics.json") or {}).get("details", {}).get("diversity", {})
        values = np.load(out / spec.name / "diversity_clip_per_prompt.npy")
        least, most = (prompts["prompts"][int(i)] for i in (values.argmin(), values.argmax()))
        cells = [f"{_fmt(row.get(f'diversity_{kind}'), 3)} [{_fmt(row.get(f'diversity_{kind}_lo'), 3)}, "
                 f"{_fmt(row.get(f'diversity_{kind}_hi'), 3)}]" for kind in ("clip", "inception")]
        lines.append(f"| {spec.name} | " + " | ".join(cells) + f" | {captions[least][:60]} ({values.min():.3f}) | "
                     f"{captions[most][:60]} ({values.max():.3f}) |")
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


def write_all(config, suite, done, manifest: dict) -> None:
    """``table.csv``, ``manifest.json``, the markdown report with its grid, and the HTML page beside it."""
    out, report_path, protocol = Path(config.out), Path(config.report), suite.protocol
    specs, results, stores = done.specs, done.results, done.stores
    frame = table(specs, results, suite.scorer.columns)
    atomic_write_text(out / "table.csv", frame.to_csv(index=False))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str))
    grid = write_grid(report_path.with_suffix("") / "grid.png", specs, stores, protocol.captions)
    card = Card(**manifest["protocol_card"])
    parts = [
        f"# {suite.title}",
        f"Protocol `{protocol.name}` (hash `{protocol.hash()[:12]}`), {len(protocol.captions)} samples per model"
        + (f", reference {protocol.reference.count} images" if protocol.reference else "") + f". {suite.scorer.note} "
        f"Extractors: " + ", ".join(f"{r} `{i}`" for r, i in manifest["extractors"].items()) + ".",
        markdown_table(specs, results, suite.scorer),
    ]
    parts += [part for part in (noise_lines(specs, out, suite.scorer.columns),
                                seeds_table(specs, results, suite.scorer),
                                diversity_table(specs, results, out, protocol.captions)) if part]
    if card.deviations:
        parts.append(f"⚠ {len(card.deviations)} departure(s) from the paper's protocol: see the protocol card.")
    if suite.notes:
        parts.append(suite.notes)
    if grid:
        parts.append(f"![samples]({grid.relative_to(report_path.parent).as_posix()})")
    page = report_path.with_suffix(".html")
    parts.append(f"Browsable report with the side-by-side viewer: [{page.name}]({page.name}).")
    parts.append(card_markdown(card))
    parts.append(f"Manifest: `{out / 'manifest.json'}` (git {manifest['git_commit'][:12]}, device "
                 f"{manifest['device']['name']}, seed {manifest['seed']}).")
    atomic_write_text(report_path, "\n\n".join(parts) + "\n")
    from bench.html import write_run_page
    from bench.pages import gallery_indices, run_page

    links = {"markdown report": report_path.name, "manifest": os.path.relpath(out / "manifest.json", page.parent)}
    write_run_page(page, run_page(suite, specs, results, done.within_noise, card, done.images, done.per_sample,
                                  done.details, gallery_indices(len(protocol.captions), config.gallery), links))
