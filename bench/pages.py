"""The browsable report of a run (``reports/<run>.html``) and of a sweep: the images it shows and the page data.

Images are the samples at the protocol's metric resolution (256 px for COCO), written once as files under
``reports/<run>/gallery/<model>/`` (WebP; PNG below ``EMBED_BELOW`` px) and reused by later runs; pages of small
images (the demo's 8 px digits) embed them instead, so a committed page needs nothing beside it. Each model shows
the same gallery subset of captions (same sample index, hence the same seed, in every column), its lowest-CLIP
samples, its least and most diverse prompts' seeds (``--diversity``) and its non-finite samples.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.html import data_url, save_thumbnail

EMBED_BELOW = 64  # px: images this small are embedded in the page
LOWEST_CLIP = 8  # lowest-CLIP samples shown per model
EXTREME_PROMPTS = 3  # least and most diverse prompts shown per model


class Item(NamedTuple):
    key: str  # file stem under the model's gallery folder
    caption: int  # index of the caption in the protocol
    index: int  # sample index in its store (its noise)
    seed: int  # the store's noise seed


def gallery_indices(n: int, count: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist())) if count else []


def gallery_items(n: int, gallery: int, seed: int) -> list[Item]:
    """The gallery subset's samples: the same sample indices (hence noise) for every model."""
    return [Item(f"{i:08d}", i, i, seed) for i in gallery_indices(n, gallery)]


def wanted(n: int, gallery: int, seed: int, per_sample: dict, details: dict, diversity_seed: int) -> list[Item]:
    """The samples a model's page shows: the gallery subset, the lowest-CLIP samples, the seeds of the least and
    most diverse prompts."""
    items = {item.key: item for item in gallery_items(n, gallery, seed)}
    if "clip_scores" in per_sample:
        for position in np.argsort(per_sample["clip_scores"])[:LOWEST_CLIP]:
            i = int(per_sample["sample_indices"][position])
            items.setdefault(f"{i:08d}", Item(f"{i:08d}", i, i, seed))
    diversity = details.get("diversity")
    if diversity and "diversity_clip_per_prompt" in per_sample:
        order = np.argsort(per_sample["diversity_clip_per_prompt"])
        for position in {*order[:EXTREME_PROMPTS].tolist(), *order[-EXTREME_PROMPTS:].tolist()}:
            for s in range(diversity["k"]):
                key = f"div-{diversity['prompts'][position]:08d}-{s}"
                items[key] = Item(key, diversity["prompts"][position], position * diversity["k"] + s, diversity_seed)
    return list(items.values())


def thumbnail_path(folder: Path, key: str, resolution: int) -> Path:
    return folder / f"{key}{'.png' if resolution < EMBED_BELOW else '.webp'}"


class GalleryWriter:
    """Saves the thumbnails of ``items`` (one store's samples, by index) as the samples are generated, so that the
    report finds them instead of generating them again; ``submit`` has ``bench.report.PngWriter``'s signature and
    runs on the generation's worker threads. ``to_thumbnails`` maps uint8 NHWC samples to the thumbnails'
    resolution, as the report's own rendering does."""

    def __init__(self, folder: Path, items: list[Item], to_thumbnails, resolution: int):
        self.paths = {item.index: thumbnail_path(folder, item.key, resolution) for item in items}
        self.to_thumbnails, self.resolution = to_thumbnails, resolution

    def submit(self, images: np.ndarray, indices) -> None:
        chosen = [k for k, index in enumerate(indices) if int(index) in self.paths]
        if chosen:
            for k, image in zip(chosen, self.to_thumbnails(images[chosen])):
                save_thumbnail(image, self.paths[int(indices[k])], size=max(self.resolution, 1))


def thumbnails(folder: Path, items: list[Item], make_images, resolution: int) -> dict[str, str]:
    """``{key: path}`` of every item's image under ``folder``, making the missing ones with ``make_images(items)``
    (uint8 NHWC at the metric resolution; None when the model cannot be loaded: those stay missing)."""
    paths = {item.key: thumbnail_path(folder, item.key, resolution) for item in items}
    missing = [item for item in items if not paths[item.key].exists()]
    images = make_images(missing) if missing and make_images else None
    if images is not None:
        for item, image in zip(missing, images):
            save_thumbnail(image, paths[item.key], size=max(resolution, 1))
    return {key: str(path.resolve()) for key, path in paths.items() if path.exists()}


def reference(path: str | None, embed: bool) -> str | None:
    """How the page points at an image: its path, or the image itself for small ones."""
    if path is None or not embed:
        return path
    from PIL import Image

    with Image.open(path) as image:
        return data_url(np.asarray(image.convert("RGB")))


def run_page(suite, specs, results: dict, marks: dict, card, images: dict, per_sample: dict, details: dict,
             gallery: list[int], links: dict) -> dict:
    """The page data of ``bench.html.write_run_page`` for a run's table."""
    protocol, scorer = suite.protocol, suite.scorer
    embed = protocol.metric_resolution < EMBED_BELOW

    def ref(model, key):
        return reference(images.get(model, {}).get(key), embed)

    rows = [{**{k: v for k, v in results[spec.name].items() if not isinstance(v, (list, dict))}, "model": spec.name,
             "paper": dict(scorer.paper.get(spec.paper_row or "", {})), "within_noise_of": marks.get(spec.name, {})}
            for spec in specs]
    per_model = {}
    for spec in specs:
        samples, found = per_sample.get(spec.name, {}), {}
        if "clip_scores" in samples:
            order = np.argsort(samples["clip_scores"])[:LOWEST_CLIP]
            found["lowest_clip"] = [{"index": int(samples["sample_indices"][p]),
                                     "caption": protocol.captions[int(samples["sample_indices"][p])],
                                     "score": float(samples["clip_scores"][p]),
                                     "image": ref(spec.name, f"{int(samples['sample_indices'][p]):08d}")}
                                    for p in order]
        diversity = details.get(spec.name, {}).get("diversity")
        if diversity and "diversity_clip_per_prompt" in samples:
            values = samples["diversity_clip_per_prompt"]
            order = np.argsort(values)
            extremes = {"least_diverse": order[:EXTREME_PROMPTS], "most_diverse": order[::-1][:EXTREME_PROMPTS]}
            for key, picked in extremes.items():
                found[key] = [{"index": diversity["prompts"][p], "caption": protocol.captions[diversity["prompts"][p]],
                               "score": float(values[p]),
                               "images": [ref(spec.name, f"div-{diversity['prompts'][p]:08d}-{s}")
                                          for s in range(diversity["k"])]} for p in picked]
        found["nonfinite"] = [int(i) for i in samples.get("nonfinite_indices", [])]
        per_model[spec.name] = found
    return {
        "title": suite.title, "subtitle": f"Protocol {protocol.name}, {len(protocol.captions)} samples per model",
        "links": links, "protocol_card": {**card.lines, **{f"{name}": f"{row['sampler']}, {row['steps']} step(s), "
                                                                      f"guidance {row['guidance']}, {row['dtype']}"
                                                              for name, row in card.models.items()}},
        "deviations": list(card.deviations),
        "columns": [{"key": c, "digits": scorer.digits.get(c, 3)} for c in scorer.columns],
        "rows": rows, "table_note": "Intervals: 95%, centred on the observed value (docs/metrics.md). "
                                    + scorer.note,
        "notes": [line for line in suite.notes.splitlines() if line.strip()],
        "gallery": {"captions": [protocol.captions[i] for i in gallery], "indices": gallery,
                    "models": {spec.name: [ref(spec.name, f"{i:08d}") for i in gallery] for spec in specs}},
        "per_model": per_model,
    }


def sweep_page(suite, spec_a, spec_b, convention: str, frame, verdicts: dict, card, images: dict,
               gallery: list[int], links: dict) -> dict:
    """The page data of ``bench.html.write_sweep_page``: one point per w, each with its images of the same
    captions."""
    protocol = suite.protocol
    embed = protocol.metric_resolution < EMBED_BELOW
    points = []
    for row in frame.to_dict("records"):
        name = row["name"]
        point = {k: v for k, v in row.items() if k != "name"}
        point["images"] = [reference(images.get(name, {}).get(f"{i:08d}"), embed) for i in gallery]
        points.append(point)
    notes = [f"Best {metric} at w = {frame.iloc[v['best']]['w']:g}: "
             + ("beats both ends beyond the 95% interval" if v["beats_both"] else "within noise of an end, or worse")
             for metric, v in verdicts.items()]
    return {"title": f"Weight interpolation {spec_a.name} ↔ {spec_b.name} (Figure 3)", "a": spec_a.name,
            "b": spec_b.name, "convention": convention, "points": points, "links": links,
            "protocol_card": dict(card.lines), "deviations": list(card.deviations), "notes": notes,
            "captions": [protocol.captions[i] for i in gallery], "indices": gallery}
