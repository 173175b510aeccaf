"""Weight-interpolation sweeps (SwiftBrush v2's Figure 3), evaluated through the bench engine.

Each point merges the two students' UNets in memory (``bench.interpolate``) and is evaluated as a model of its own,
with its own resumable store. The axis is the weight w of B, as Figure 3 draws it (0 = SD Turbo, 1 = SwiftBrush):

    theta = (1 - w) * theta_A + w * theta_B        (Eq. 6 with lambda = 1 - w)

Text encoder, tokenizer, VAE and scheduler come from A. Writes ``<out>/sweep.csv``, ``<report>.md`` and
``<report>/figure3.png`` with the best point by FID marked.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench import report
from bench.card import Card
from bench.card import markdown as card_markdown
from bench.engine import ModelRun, run_models
from bench.errors import UserError
from bench.html import write_sweep_page
from bench.metrics.intervals import sweep_verdict
from bench.pages import gallery_indices, sweep_page
from bench.registry import resolve
from bench.store import atomic_write_bytes, atomic_write_text
from bench.suites import RunConfig, Suite

SWEEP_GALLERY = 12  # captions whose images each point shows on the sweep's page
CONVENTION = "w = weight of B: θ = (1 − w)·θ_A + w·θ_B (Eq. 6 with λ = 1 − w)"


def parse_grid(text: str) -> list[float]:
    """``start:stop:step`` (inclusive) or a comma list; every point in [0, 1]."""
    try:
        if ":" in text:
            first, last, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError
            points = np.round(np.arange(first, last + step / 2, step), 6).tolist()
        else:
            points = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lams {text!r}: expected start:stop:step (e.g. 0:1:0.1) or a list (0,0.5,1)") from None
    if not points or any(not 0 <= w <= 1 for w in points):
        raise UserError(f"--lams {text!r}: every weight must lie in [0, 1]")
    return sorted(set(points))


def merged_loader(spec_a, spec_b, w: float, device: str, dtype: str | None, cache: dict):
    """A loader for the point w: both UNets are read once, in float32, and merged per point."""

    def load():
        import torch

        from bench.interpolate import merge_unets
        from bench.load import load_model, load_spec_unet

        if "a" not in cache:
            cache["a"] = load_model(spec_a, device=device, dtype=dtype)
            cache["unet_a"] = load_spec_unet(spec_a, torch.float32)
            cache["unet_b"] = load_spec_unet(spec_b, torch.float32)
        try:
            unet = merge_unets(cache["unet_a"], cache["unet_b"], lam=1.0 - w)
        except ValueError as error:
            raise UserError(f"cannot merge {spec_a.name} and {spec_b.name}: {error}") from error
        model = cache["a"]
        # dtype only when it changes: diffusers warns on every .to(dtype), even to the model's own dtype
        unet = unet.to(model.device) if unet.dtype == model.dtype else unet.to(model.device, model.dtype)
        unet = unet.eval().requires_grad_(False)
        return dataclasses.replace(model, unet=unet, spec=dataclasses.replace(model.spec, name=f"w={w:g}"))

    return load


def point_names(grid: list[float]) -> list[str]:
    """``w0.25``-style names with as many decimals as tell the points apart: each point has its own store."""
    digits = 2
    while len({f"{w:.{digits}f}" for w in grid}) < len(set(grid)):
        digits += 1
    return [f"w{w:.{digits}f}" for w in grid]


def plot(frame: pd.DataFrame, name_a: str, name_b: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = frame.loc[frame["fid"].idxmin()]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, metric in zip(axes, ["fid", "clip_score", "precision", "recall"]):
        ax.plot(frame["w"], frame[metric], "o-")
        if f"{metric}_lo" in frame:  # the 95% intervals
            ax.fill_between(frame["w"], frame[f"{metric}_lo"], frame[f"{metric}_hi"], alpha=0.2)
        ax.plot(best["w"], best[metric], "r*", markersize=14, label=f"best FID (w = {best['w']:g})")
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel(f"w (0 = {name_a}, 1 = {name_b})")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Interpolation {name_a} ↔ {name_b}; {CONVENTION}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=130))
    plt.close(fig)


def verdict_line(frame: pd.DataFrame, metric: str, verdict: dict) -> str:
    """Whether the sweep's best point on ``metric`` beats both ends beyond their 95% intervals."""
    best = frame.iloc[verdict["best"]]
    ends = " and ".join(f"w = {frame.iloc[i]['w']:g} ({'beaten' if verdict[key] else 'within noise or better'})"
                        for i, key in ((0, "beats_first"), (len(frame) - 1, "beats_last")))
    answer = "beats both ends beyond the interval" if verdict["beats_both"] else "does not beat both ends beyond " \
                                                                                  "the interval"
    return (f"Best {metric} at w = {best['w']:g} ({best[metric]:.4g} [{best[f'{metric}_lo']:.4g}, "
            f"{best[f'{metric}_hi']:.4g}]) {answer}: {ends}.")


def run_sweep(config: RunConfig, suite: Suite, a: str, b: str, lams: str, state, device: str) -> pd.DataFrame | None:
    """The sweep of ``a`` ↔ ``b`` over the grid ``lams``, written under ``config.out`` and to ``config.report``;
    the frame of its points on the main process, else None."""
    spec_a, spec_b = resolve(a, suite.registry), resolve(b, suite.registry)
    for spec in (spec_a, spec_b):
        if spec.kind != "one-step":
            raise UserError(f"--a/--b {spec.name!r} is a {spec.kind} model: the sweep merges one-step students")
    from bench.load import weights_identity

    cache, models, grid = {}, [], parse_grid(lams)
    config = dataclasses.replace(config, gallery=min(config.gallery, SWEEP_GALLERY))
    parents = {}  # both students' weights identity, computed once for all points

    def weights() -> dict:
        if not parents:
            parents.update(a=weights_identity(spec_a, config.cache_dir), b=weights_identity(spec_b, config.cache_dir))
        return parents

    for w, name in zip(grid, point_names(grid)):
        point = dataclasses.replace(spec_a, name=name, paper_row=None, hint="")
        provenance = {"a": spec_a.to_dict(), "b": spec_b.to_dict(), "w_of_b": w, "convention": CONVENTION}
        models.append(ModelRun(point, merged_loader(spec_a, spec_b, w, device, config.dtype, cache), provenance,
                               weights))
    done = run_models(config, suite, models, state, device, run={"a": spec_a.to_dict(), "b": spec_b.to_dict()})
    if done is None:
        return None
    points = [(done.stores[spec.name].fingerprint["provenance"]["w_of_b"], spec.name) for spec in done.specs]
    frame = pd.DataFrame([{"w": w, "lambda_eq6": round(1 - w, 6), **done.results[name], "name": name}
                          for w, name in sorted(points)])
    out, report_path = Path(config.out), Path(config.report)
    atomic_write_text(out / "sweep.csv", frame.to_csv(index=False))
    figure = report_path.with_suffix("") / "figure3.png"
    plot(frame, spec_a.name, spec_b.name, figure)
    manifest = report.manifest(config, suite, done.specs, done.stores, done.extractor_ids, done.timings, device,
                               state.num_processes)
    manifest["sweep"] = {"a": spec_a.to_dict(), "b": spec_b.to_dict(), "convention": CONVENTION}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str))
    best = frame.loc[frame["fid"].idxmin()]
    verdicts = {metric: sweep_verdict(frame.to_dict("records"), metric) for metric in ("fid", "recall")
                if f"{metric}_lo" in frame}
    columns = ["w", "lambda_eq6", "n_samples", "fid", "precision", "recall", "clip_score"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |" for _, row in frame.iterrows()]
    text = [f"# Weight interpolation {spec_a.name} ↔ {spec_b.name} (Figure 3)",
            f"{CONVENTION}. w = 0 is {spec_a.name}, w = 1 is {spec_b.name}. Protocol `{suite.protocol.name}`, "
            f"{len(suite.protocol.captions)} samples per point.", "\n".join(lines),
            f"Best FID at w = {best['w']:g} (λ = {best['lambda_eq6']:g}): FID {best['fid']:.3f}, precision "
            f"{best['precision']:.3f}, recall {best['recall']:.3f}, CLIP {best['clip_score']:.4f}.",
            *[verdict_line(frame, metric, verdict) for metric, verdict in verdicts.items()],
            f"![figure 3]({figure.relative_to(report_path.parent).as_posix()})",
            card_markdown(Card(**manifest["protocol_card"])),
            f"Manifest: `{out / 'manifest.json'}`."]
    page = report_path.with_suffix(".html")
    text.insert(-1, f"Browsable page with the images of every point: [{page.name}]({page.name}).")
    atomic_write_text(report_path, "\n\n".join(text) + "\n")
    links = {"markdown report": report_path.name, "manifest": os.path.relpath(out / "manifest.json", page.parent)}
    write_sweep_page(page, sweep_page(suite, spec_a, spec_b, CONVENTION, frame, verdicts, Card(
        **manifest["protocol_card"]), done.images, gallery_indices(len(suite.protocol.captions), config.gallery),
        links))
    print(frame[columns].to_string(index=False))
    return frame
