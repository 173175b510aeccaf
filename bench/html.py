"""Self-contained HTML pages beside the markdown reports: ``reports/<run>.html`` for a run (Table 1) and for a
weight sweep (Figure 3).

One file per page: inline CSS, inline vanilla JavaScript and the page's data as an inline JSON
``<script type="application/json">``. Nothing is fetched at view time (a Content-Security-Policy forbids it);
images are files the caller writes in a sibling folder (e.g. ``reports/<run>/gallery/<model>/<index>.webp``,
see :func:`save_thumbnail`) and the page references them by relative path, so the page works when opened
from disk (``file://``) in Chromium and Firefox. Every string from the caller (titles, captions, model
names) reaches the page as JSON text and is put in the DOM as text, never as markup.

The writers take plain JSON-able dicts (numpy scalars are accepted; NaN and ±inf are shown as "–"); keys
not named below are carried along and ignored, so rows of ``table.csv`` or ``sweep.csv`` can be passed as
they are.

Run page, ``write_run_page(path, page)``::

    title           str
    subtitle        str, optional: one line under the title
    links           {label: relative path}, optional (markdown report, manifest, sweep pages)
    protocol_card   {label: value}, optional: the protocol in a few lines (value: str, number or list)
    deviations      [str], optional: departures from the paper's protocol, flagged on the card
                    (an empty list prints "no deviations")
    columns         [metric name | {"key", "label", "higher_is_better", "digits"}]: the metric columns,
                    in order; names fid, precision, recall and clip_score get their label, direction and
                    digits by default
    rows            [{"model": str, "n" (or "n_samples"): int,      one per model, in the table's order
                      "<metric>": float,                            ours
                      "<metric>_lo", "<metric>_hi": float,          optional: an interval, shown [lo, hi]
                      "paper": {"<metric>": float},                 optional: the paper's value, shown with Δ
                      "within_noise_of": [model] | {"<metric>": [model]}}]   optional: a "≈" marker
    table_note      str, optional: one line under the table (what the intervals are, where paper numbers
                    come from)
    notes           [str], optional: bullet lines after the table (`code` in backticks is shown as code)
    gallery         optional, the side-by-side viewer (rows = captions, columns = models, same seed):
                    {"captions": [str], "indices": [int] (sample index of each caption, aligned),
                     "models": {model: [relative image path or None, aligned with indices]
                                       | "relative/path/with/{index}.webp"},   ({index:08d} pads to 8 digits)
                     "page_size": int (default 20), "note": str (optional)}
                    A template keeps the page small: 30,000 captions x 8 models are 1.8 MB of page with
                    templates, 9.5 MB with lists. With --save-images a template can name every saved sample.
    per_model       optional, {model: {"lowest_clip": [{"index", "caption", "score", "image"}],
                                       "least_diverse": [{"index", "caption", "score", "images": [path]}],
                                       "most_diverse": [...as least_diverse],
                                       "nonfinite": [index | {"index", "caption"}]}}
                    (a key left out is a section left out; an empty "nonfinite" list says "none")

Sweep page, ``write_sweep_page(path, page)``::

    title, subtitle, links, protocol_card, deviations, table_note, notes    as above
    a, b            str: the models at w = 0 and w = 1
    convention      str: how w relates to the paper's λ (bench.sweep_lambda.CONVENTION)
    metrics         optional, the plot panels and table columns, as ``columns`` above
                    (default fid, clip_score, precision, recall: Figure 3's panels)
    points          [{"w": float, "lambda" or "lambda_eq6": float (default 1 - w), "n" or "n_samples": int,
                      "<metric>": float, "<metric>_lo", "<metric>_hi": optional,
                      "images": [relative path or None, aligned with indices] | "path/{index}.png"}]
    captions        [str]: the shared captions every point's images show (optional when no images)
    indices         [int]: their sample indices, aligned with captions
    best            optional {"w": float}: the marked point (default the lowest FID)

Image paths may also be absolute or ``Path`` objects: the writers make them relative to the page's folder.
Relative paths are percent-encoded for the page, so names with spaces, ``#`` or ``%`` work. An image may
also be embedded as a ``data:image/...;base64,...`` URL (:func:`data_url`), for tiny images or a page that
must travel without its folder.
"""

import html
import json
import math
import os
import re
from pathlib import Path

from bench.store import atomic_write_bytes, atomic_write_text

KNOWN_METRICS = {  # key: (label, higher_is_better, digits)
    "fid": ("FID", False, 2),
    "precision": ("precision", True, 3),
    "recall": ("recall", True, 3),
    "clip_score": ("CLIP score", True, 4),
}
SWEEP_METRICS = ["fid", "clip_score", "precision", "recall"]  # Figure 3's panels, in bench.sweep_lambda's order
GALLERY_SIZE = 256  # px, long side of a gallery thumbnail
GALLERY_BUDGET_BYTES = 50_000_000  # a run's gallery folder stays under this by default (choose the subset to fit)

_PLACEHOLDER = re.compile(r"(\{index(?::0\d+d)?\})")
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src 'self' file: data: blob:; base-uri 'none'; form-action 'none'")


def write_run_page(path, page: dict) -> Path:
    """Write the run page described by ``page`` (schema in the module docstring) to ``path``."""
    path = Path(path)
    return _write(path, render_run_page(page, base=path.parent))


def write_sweep_page(path, page: dict) -> Path:
    """Write the sweep page described by ``page`` (schema in the module docstring) to ``path``."""
    path = Path(path)
    return _write(path, render_sweep_page(page, base=path.parent))


def render_run_page(page: dict, base=None) -> str:
    """The run page's HTML text; ``base`` is the page's folder, for image paths given as absolute paths."""
    _require(page, ["title", "columns", "rows"], "run page")
    columns = [_column(c) for c in page["columns"]]
    rows = []
    for row in page["rows"]:
        _require(row, ["model"], "run page row")
        row = dict(row)
        row.setdefault("n", row.pop("n_samples", None))
        rows.append(row)
    data = {**_common(page, base), "kind": "run", "columns": columns, "rows": rows}
    if page.get("gallery") is not None:
        data["gallery"] = _gallery(page["gallery"], base)
    if page.get("per_model") is not None:
        data["per_model"] = [[str(name), _per_model(entry, base)] for name, entry in _pairs(page["per_model"])]
    return _document(str(page["title"]), "run", data)


def render_sweep_page(page: dict, base=None) -> str:
    """The sweep page's HTML text; ``base`` as for :func:`render_run_page`."""
    _require(page, ["title", "a", "b", "points"], "sweep page")
    metrics = [_column(c) for c in page.get("metrics") or SWEEP_METRICS]
    captions, indices = list(page.get("captions") or []), list(page.get("indices") or [])
    if len(captions) != len(indices):
        raise ValueError(f"sweep page: {len(captions)} captions but {len(indices)} indices")
    for point in page["points"]:
        _require(point, ["w"], "sweep point")
    points = []
    for point in sorted(page["points"], key=lambda p: float(p["w"])):
        point = dict(point)
        point.setdefault("lambda", point.pop("lambda_eq6", round(1.0 - float(point["w"]), 6)))
        point.setdefault("n", point.pop("n_samples", None))
        point["images"] = _images(point.get("images"), len(indices), base, f"point w={point['w']}")
        points.append(point)
    if not points:
        raise ValueError("sweep page: no points")
    best = _best(points, page.get("best"))
    data = {**_common(page, base), "kind": "sweep", "a": str(page["a"]), "b": str(page["b"]),
            "convention": str(page.get("convention", "")), "metrics": metrics, "points": points,
            "captions": [str(c) for c in captions], "indices": [int(i) for i in indices], "best": best}
    return _document(str(page["title"]), "sweep", data)


def save_thumbnail(image, path, size: int = GALLERY_SIZE, quality: int = 80) -> int:
    """Save ``image`` (a PIL image or an HxW[xC] uint8 array) with its long side at most ``size`` px, as WebP
    (or whatever ``path``'s suffix names), and return the bytes written. Images smaller than ``size`` are kept
    as they are. A 256 px WebP at quality 80 of a photograph is about 8-15 KB, so ``GALLERY_BUDGET_BYTES``
    holds about 4,000 thumbnails: e.g. 500 captions x 8 models."""
    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    path = Path(path)
    fmt = {".webp": "WEBP", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "WEBP")
    options = {"quality": quality} if fmt in ("WEBP", "JPEG") else {"optimize": True}
    atomic_write_bytes(path, lambda f: image.convert("RGB").save(f, format=fmt, **options))
    return path.stat().st_size


def data_url(image, fmt: str = "PNG") -> str:
    """``image`` (a PIL image or an HxW[xC] uint8 array) as a ``data:`` URL to embed in the page."""
    import base64
    import io

    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


# -- data ---------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def _require(mapping, keys, what: str) -> None:
    if not isinstance(mapping, dict):
        raise ValueError(f"{what}: expected a dict, got {type(mapping).__name__}")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")


def _pairs(mapping) -> list:
    """A dict (or list of pairs) as a list of [key, value]: JSON objects lose the order of integer-like keys."""
    return [[k, v] for k, v in (mapping.items() if isinstance(mapping, dict) else mapping)]


def _column(column) -> dict:
    if isinstance(column, str):
        column = {"key": column}
    _require(column, ["key"], "column")
    label, higher, digits = KNOWN_METRICS.get(column["key"], (column["key"], True, 3))
    return {"key": str(column["key"]), "label": str(column.get("label", label)),
            "higher_is_better": bool(column.get("higher_is_better", higher)),
            "digits": int(column.get("digits", digits))}


def _common(page: dict, base) -> dict:
    card = [[str(k), v if isinstance(v, (int, float, list)) else str(v)]
            for k, v in _pairs(page.get("protocol_card") or {})]
    deviations = page.get("deviations")
    return {"title": str(page["title"]), "subtitle": str(page.get("subtitle", "")),
            "links": [[str(label), _url(href, base)] for label, href in _pairs(page.get("links") or {})],
            "card": card, "deviations": None if deviations is None else [str(d) for d in deviations],
            "table_note": str(page.get("table_note", "")), "notes": [str(n) for n in page.get("notes") or []]}


def _gallery(gallery: dict, base) -> dict:
    _require(gallery, ["captions", "indices", "models"], "gallery")
    captions, indices = list(gallery["captions"]), [int(i) for i in gallery["indices"]]
    if len(captions) != len(indices):
        raise ValueError(f"gallery: {len(captions)} captions but {len(indices)} indices")
    models = [[str(name), _images(images, len(indices), base, f"gallery model {name!r}")]
              for name, images in _pairs(gallery["models"])]
    return {"captions": [str(c) for c in captions], "indices": indices, "models": models,
            "page_size": int(gallery.get("page_size", 20)), "note": str(gallery.get("note", ""))}


def _per_model(entry: dict, base) -> dict:
    out = {}
    if entry.get("lowest_clip") is not None:
        out["lowest_clip"] = [{**e, "image": _url(e.get("image"), base)} for e in entry["lowest_clip"]]
    for key in ("least_diverse", "most_diverse"):
        if entry.get(key) is not None:
            out[key] = [{**e, "images": [_url(p, base) for p in e.get("images") or []]} for e in entry[key]]
    if entry.get("nonfinite") is not None:
        out["nonfinite"] = [e if isinstance(e, dict) else {"index": int(e)} for e in entry["nonfinite"]]
    return out


def _images(images, count: int, base, what: str):
    """A template string with {index} or a list of paths aligned with the captions, as URLs."""
    if images is None:
        return None
    if isinstance(images, str) and _PLACEHOLDER.search(images):
        return _url(images, base)
    if isinstance(images, (str, Path)):
        raise ValueError(f"{what}: an image template needs {{index}} or {{index:08d}}, got {str(images)!r}")
    images = list(images)
    if len(images) != count:
        raise ValueError(f"{what}: {len(images)} images for {count} captions")
    return [_url(p, base) for p in images]


def _url(path, base) -> str | None:
    """A relative, percent-encoded URL for a file path (placeholders such as {index:08d} kept)."""
    if path is None:
        return None
    text = os.fspath(path)
    if isinstance(path, str) and text.startswith("data:image/"):  # an embedded image is its own URL
        return text
    if os.path.isabs(text):
        if base is None:
            raise ValueError(f"absolute path {text!r} given where the page's folder is unknown")
        text = os.path.relpath(text, base)
    text = text.replace(os.sep, "/")
    from urllib.parse import quote

    return "".join(part if _PLACEHOLDER.fullmatch(part) else quote(part, safe="/")
                   for part in _PLACEHOLDER.split(text))


def _best(points: list, best) -> int | None:
    if best is not None:
        w = float(best["w"] if isinstance(best, dict) else best)
        return min(range(len(points)), key=lambda i: abs(float(points[i]["w"]) - w))
    finite = [i for i, p in enumerate(points) if _finite(p.get("fid"))]
    return min(finite, key=lambda i: float(points[i]["fid"])) if finite else None


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _clean(value):
    """JSON-safe: numpy scalars to Python, NaN/inf to None, Paths to POSIX strings, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _document(title: str, kind: str, data: dict) -> str:
    payload = json.dumps(_clean(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
    # Inside <script> only "</script" and "<!--" matter; escaping every <, > and & also keeps the text inert if
    # someone pastes it elsewhere. U+2028/2029 are escaped for old JavaScript parsers.
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        payload = payload.replace(char, escaped)
    title = html.escape(title)
    return "\n".join([
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="generator" content="onestep-bench bench.html">',
        f"<title>{title}</title>",
        f"<style>{_asset('page.css')}</style>",
        "</head>",
        "<body>",
        f'<main id="app" data-kind="{kind}">',
        f"<header><h1>{title}</h1></header>",
        "<noscript><p>This page draws its table, viewer and plots with JavaScript; the markdown report beside it "
        "has the same numbers.</p></noscript>",
        "</main>",
        '<div id="tip" class="tip" role="tooltip" hidden></div>',
        f'<script id="page-data" type="application/json">{payload}</script>',
        f"<script>{_asset('page.js')}</script>",
        "</body>",
        "</html>",
        "",
    ])


def _asset(name: str) -> str:
    """The page's stylesheet or script (``bench/report_assets``), inlined so the page needs nothing beside it."""
    return (Path(__file__).parent / "report_assets" / name).read_text(encoding="utf-8")
