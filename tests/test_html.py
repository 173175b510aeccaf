"""The HTML report pages (bench.html): pure-Python checks of the written text, and browser checks that load
synthetic pages from disk in headless Chromium (tests/browser.py) and inspect them through the DOM.

The browser tests install Chromium with apt-get when it is missing (as root); they fail when it cannot be had,
unless ``BENCH_SKIP_BROWSER=1``. Screenshots go to ``$BENCH_ARTIFACTS`` (default: a pytest temporary folder,
printed). Select them with ``-k browser``.
"""

import json
import math
import os
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import html as pages

REPO = Path(__file__).resolve().parents[1]
NASTY = '</script><b>&"bold"</b> <!-- x'
MODELS = ["teacher <cfg 4.5>", 'student "A" & B #2', "merged", "7"]  # "7": JSON would reorder an object key
ANIMALS = ["cat", "dog", "zebra", "horse", "bird", "sheep", "cow", "bear", "giraffe"]


def captions(count: int) -> list[str]:
    out = [NASTY, 'a cat <on> a "mat" & a dog']
    out += [f"a photo of a {ANIMALS[i % len(ANIMALS)]} in field {i}" for i in range(2, count)]
    return out


def run_page(root: Path, n_captions: int = 45) -> dict:
    """A run page dict with 4 models, images written as small PNGs under root/run/gallery/<model>/."""
    caps = captions(n_captions)
    indices = [3 * i + 1 for i in range(n_captions)]  # sample indices are not positions
    models = {}
    for m, name in enumerate(MODELS):
        folder = root / "run" / "gallery" / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, index in enumerate(indices):
            colour = (60 * m % 256, (37 * k) % 256, 200 - 40 * m)
            Image.new("RGB", (32, 32), colour).save(folder / f"{index}.png")
        paths = [f"run/gallery/{name}/{index}.png" for index in indices]
        if m == 2 and n_captions > 6:
            paths[5] = None  # a missing sample shows a placeholder, not a broken image
            paths[6] = pages.data_url(Image.new("RGB", (32, 32), (255, 0, 0)))  # an embedded one
        models[name] = f"run/gallery/{name}/{{index}}.png" if m == 3 else paths
    nan = float("nan")
    rows = [
        {"model": MODELS[0], "n": 30000, "fid": 13.45, "precision": 0.64, "recall": 0.53, "clip_score": 0.331,
         "fid_lo": 13.2, "fid_hi": 13.7, "paper": {"fid": 13.45, "clip_score": 0.33}},
        {"model": MODELS[1], "n": 30000, "fid": 8.14, "precision": 0.71, "recall": 0.52, "clip_score": 0.339,
         "fid_lo": 7.9, "fid_hi": 8.4, "paper": {"fid": 8.14, "precision": 0.71}, "within_noise_of": [MODELS[2]]},
        {"model": MODELS[2], "n_samples": 30000, "fid": 8.29, "precision": np.float32(0.69), "recall": 0.55,
         "clip_score": 0.336, "within_noise_of": {"fid": [MODELS[1]]}},
        {"model": MODELS[3], "n": np.int64(30000), "fid": nan, "precision": 0.41, "recall": 0.47, "clip_score": 0.318},
    ]
    gallery_root = f"run/gallery/{MODELS[0]}"
    return {
        "title": 'Table 1 <demo> & "friends"',
        "subtitle": "COCO-2014 30K, `seed 0`",
        "links": {"markdown report": "run.md", "manifest": "../results/run/manifest.json"},
        "protocol_card": {"protocol": "coco2014-30k (hash 448fcfd1a9f5)", "samples per model": 30000,
                          "resize": "PIL bicubic 512 → 299", "extractors": ["clean-fid inception", "ViT-g-14"]},
        "deviations": ["captions: our random draw, not the paper's list"],
        "columns": ["fid", "precision", "recall", "clip_score"],
        "rows": rows,
        "table_note": "[lo, hi]: 95% bootstrap interval. Paper: SwiftBrush v2 Table 1.",
        "notes": ["FID is biased by sample count: compare rows only at equal N."],
        "gallery": {"captions": caps, "indices": indices, "models": models},
        "per_model": {
            MODELS[0]: {"lowest_clip": [{"index": indices[k], "caption": caps[k], "score": 0.1 + k / 100,
                                         "image": f"{gallery_root}/{indices[k]}.png"} for k in range(4)],
                        "nonfinite": []},
            MODELS[1]: {"least_diverse": [{"index": indices[2], "caption": caps[2], "score": 0.021,
                                           "images": [f"{gallery_root}/{i}.png" for i in indices[:4]]}],
                        "nonfinite": [indices[3], {"index": indices[7], "caption": caps[7]}]},
        },
    }


SWEEP_WS = [0.0, 0.25, 0.5, 0.75, 1.0]
SWEEP_FID = [24.71, 18.39, 15.4, 14.98, 16.46]


def sweep_page(root: Path) -> dict:
    caps, indices = captions(6), [0, 5, 10, 15, 20, 25]
    points = []
    for k, (w, fid) in enumerate(zip(SWEEP_WS, SWEEP_FID)):
        folder = root / "sweep" / f"w{w:.2f}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in indices:
            Image.new("RGB", (24, 24), (int(255 * w), 90, 255 - int(255 * w))).save(folder / f"{index:08d}.png")
        points.append({"w": w, "n": 1800, "fid": fid, "fid_lo": fid - 0.4, "fid_hi": fid + 0.4,
                       "precision": 0.80 + 0.03 * k, "recall": 0.54 - 0.002 * k * k, "clip_score": 0.4456 + 0.0045 * k,
                       "images": f"sweep/w{w:.2f}/{{index:08d}}.png"})
    return {"title": "Weight interpolation demo-turbo ↔ demo-vsd-lora-clip (Figure 3)", "a": "demo-turbo",
            "b": "demo-vsd-lora-clip", "convention": "w = weight of B: θ = (1 − w)·θ_A + w·θ_B",
            "protocol_card": {"protocol": "demo-digits", "samples per point": 1800},
            "points": points[::-1], "captions": caps, "indices": indices}


# -- without a browser --------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Start tags, and the text of each <script>, as the browser's tokenizer sees them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.scripts, self.title, self._in = [], [], "", None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag
        if tag == "script":
            self.scripts.append([dict(attrs), ""])

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts[-1][1] += data
        elif self._in == "title":
            self.title += data


def parse(text: str) -> Tags:
    parser = Tags()
    parser.feed(text)
    parser.close()
    return parser


def page_data(text: str) -> dict:
    [data] = [body for attrs, body in parse(text).scripts if attrs.get("id") == "page-data"]
    return json.loads(data)


def test_html_escapes_captions_and_names(tmp_path):
    text = pages.render_run_page(run_page(tmp_path, 8), base=tmp_path)
    parsed = parse(text)
    assert [tag for tag, _ in parsed.tags if tag in ("script", "b", "style")] == ["style", "script", "script"]
    assert parsed.title == 'Table 1 <demo> & "friends"'
    assert "<title>Table 1 &lt;demo&gt; &amp; &quot;friends&quot;</title>" in text
    assert "</script><b>" not in text and "<!-- x" not in text
    data = page_data(text)
    assert data["gallery"]["captions"][0] == NASTY
    assert [row["model"] for row in data["rows"]] == MODELS
    assert [name for name, _ in data["gallery"]["models"]] == MODELS  # a list of pairs keeps "7" in its place
    assert data["rows"][3]["fid"] is None and data["rows"][2]["n"] == 30000  # NaN -> null; n_samples -> n
    assert math.isclose(data["rows"][2]["precision"], 0.69, rel_tol=1e-6)  # numpy scalars are plain numbers
    assert data["columns"][0] == {"key": "fid", "label": "FID", "higher_is_better": False, "digits": 2}


def test_html_image_paths_are_relative_urls(tmp_path):
    page = run_page(tmp_path, 8)
    embedded = pages.data_url(np.zeros((8, 8), np.uint8))
    page["gallery"] = {"captions": ["a", "b", "c"], "indices": [1, 2, 3],
                       "models": {"a b#%": [tmp_path / "g" / "a b#%" / "1.png", "x/é.png", None],
                                  "t": "imgs/{index:08d} x.webp", "e": [embedded] * 3}}
    data = page_data(pages.render_run_page(page, base=tmp_path))
    (_, listed), (_, template), (_, inline) = data["gallery"]["models"]
    assert listed == ["g/a%20b%23%25/1.png", "x/%C3%A9.png", None]
    assert inline == [embedded] * 3 and embedded.startswith("data:image/png;base64,iVBOR")
    assert template == "imgs/{index:08d}%20x.webp"
    with pytest.raises(ValueError, match="absolute path"):
        pages.render_run_page(page)


def test_html_sweep_page_data(tmp_path):
    data = page_data(pages.render_sweep_page(sweep_page(tmp_path), base=tmp_path))
    assert [p["w"] for p in data["points"]] == SWEEP_WS  # sorted by w
    assert data["best"] == 3 and data["points"][3]["lambda"] == 0.25
    assert [m["key"] for m in data["metrics"]] == ["fid", "clip_score", "precision", "recall"]
    page = sweep_page(tmp_path)
    page["best"] = {"w": 0.5}
    assert page_data(pages.render_sweep_page(page))["best"] == 2

    # rows of bench.sweep_lambda's frame (sweep.csv) pass as they are
    import pandas as pd

    frame = pd.DataFrame({"w": SWEEP_WS, "lambda_eq6": [1 - w for w in SWEEP_WS], "n_samples": 1800,
                          "fid": SWEEP_FID, "precision": 0.8, "recall": 0.5, "pr_features": "fid",
                          "clip_score": [0.44, 0.45, np.nan, 0.46, 0.47]})
    page = {"title": "t", "a": "x", "b": "y", "points": frame.to_dict("records")}
    points = page_data(pages.render_sweep_page(page))["points"]
    assert [(p["lambda"], p["n"], p["clip_score"]) for p in points[1:3]] == [(0.75, 1800, 0.45), (0.5, 1800, None)]


def test_html_rejects_a_malformed_page(tmp_path):
    page = run_page(tmp_path, 8)
    page["gallery"]["models"][MODELS[0]] = page["gallery"]["models"][MODELS[0]][:3]
    with pytest.raises(ValueError, match="3 images for 8 captions"):
        pages.render_run_page(page)
    page["gallery"]["models"][MODELS[0]] = "no/placeholder.png"
    with pytest.raises(ValueError, match="template"):
        pages.render_run_page(page)
    with pytest.raises(ValueError, match="missing rows"):
        pages.render_run_page({"title": "t", "columns": []})
    with pytest.raises(ValueError, match="missing"):
        pages.render_sweep_page({"title": "t", "a": "x", "b": "y", "points": [{"fid": 1.0}]})


def test_html_write_and_thumbnail(tmp_path):
    size = pages.save_thumbnail(np.full((512, 384, 3), 120, np.uint8), tmp_path / "r" / "g" / "m" / "0.webp")
    with Image.open(tmp_path / "r" / "g" / "m" / "0.webp") as image:
        assert image.size == (192, 256) and image.format == "WEBP"  # (W, H) of a 512 x 384 (H x W) array
    assert 0 < size < 20_000
    pages.save_thumbnail(Image.new("RGB", (8, 8)), tmp_path / "small.png")
    assert Image.open(tmp_path / "small.png").size == (8, 8)
    out = pages.write_run_page(tmp_path / "r.html", run_page(tmp_path, 8))
    assert out.read_text().startswith("<!doctype html>")


# -- in Chromium --------------------------------------------------------------------------------------------


def say(request, line: str) -> None:
    """A line on the terminal even under output capture (pytest prints nothing of a passing test otherwise)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)


@pytest.fixture(scope="module")
def browser(request):
    if os.environ.get("BENCH_SKIP_BROWSER") == "1":
        pytest.skip("BENCH_SKIP_BROWSER=1")
    from tests.browser import Browser, BrowserUnavailable, find_chromium

    started = time.monotonic()
    try:
        executable = find_chromium(install=True)
    except BrowserUnavailable as error:
        pytest.fail(f"no Chromium for the browser tests ({error}); set BENCH_SKIP_BROWSER=1 to skip them")
    say(request, f"browser tests: {executable}, found or installed in {time.monotonic() - started:.0f} s")
    with Browser(executable, width=1280, height=900) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def artifacts(request, tmp_path_factory):
    folder = Path(os.environ["BENCH_ARTIFACTS"]) if os.environ.get("BENCH_ARTIFACTS") else \
        tmp_path_factory.mktemp("artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    say(request, f"browser screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("report pages")  # a space in the folder: file:// URLs must be encoded
    run = pages.write_run_page(root / "run.html", run_page(root))
    sweep = pages.write_sweep_page(root / "sweep.html", sweep_page(root))
    return run, sweep


def open_page(browser, path: Path) -> dict:
    browser.navigate(path.resolve().as_uri())
    browser.wait_for("document.documentElement.dataset.ready === '1'")
    return browser.evaluate("JSON.parse(document.getElementById('page-data').textContent)")


def assert_clean(browser) -> None:
    """No console error, exception or failed load, and nothing requested but files (and embedded images)."""
    assert browser.errors == []
    assert all(url.startswith(("file://", "data:image/")) for url in browser.requests), browser.requests


TEXTS = "(sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent)"


def viewer_rows(browser) -> list[dict]:
    return browser.evaluate("""[...document.querySelectorAll('#viewer tbody tr[data-index]')].map((tr) => ({
        index: tr.dataset.index, caption: tr.querySelector('.caption').textContent,
        cells: [...tr.querySelectorAll('td[data-model]')].map((td) => ({model: td.dataset.model,
            index: td.dataset.index, img: td.querySelector('img')?.getAttribute('src') ?? null,
            alt: td.querySelector('img')?.alt ?? null}))}))""")


def check_run_page(browser, path: Path, expect_models=None) -> dict:
    """What the issue's acceptance asks of a run page: every model in the table, the same caption in every
    model's column, a search that filters rows, and a clean console. Returns the page's data."""
    data = open_page(browser, path)
    names = browser.evaluate(f"({TEXTS})('#results tbody tr td[data-key=model] .name')")
    assert sorted(names) == sorted(row["model"] for row in data["rows"])
    for model in expect_models or []:
        assert model in names
    if data.get("gallery"):
        models = [name for name, _ in data["gallery"]["models"]]
        assert browser.evaluate(f"({TEXTS})('#viewer thead th[data-model]')") == models
        rows = viewer_rows(browser)
        assert rows, "the viewer shows no rows"
        for row in rows:
            assert [cell["model"] for cell in row["cells"]] == models
            for cell in row["cells"]:
                assert cell["index"] == row["index"]
                assert cell["img"] is None or cell["alt"] == f"{cell['model']}: {row['caption']}"
        word = max(data["gallery"]["captions"][0].split(), key=len)
        browser.type_text("#viewer-search", word)
        shown = viewer_rows(browser)
        expected = [c for c in data["gallery"]["captions"] if word.lower() in c.lower()]
        assert 0 < len(shown) <= len(expected)
        assert all(word.lower() in row["caption"].lower() for row in shown)
        browser.type_text("#viewer-search", "")
        assert len(viewer_rows(browser)) == len(rows)
    assert_clean(browser)
    return data


def check_sweep_page(browser, path: Path) -> dict:
    """One point per w in every panel, and a click shows that point's images."""
    data = open_page(browser, path)
    ws = [p["w"] for p in data["points"]]
    panels = browser.evaluate("[...document.querySelectorAll('svg.plot')].map((s) => ({metric: s.dataset.metric,"
                              " ws: [...s.querySelectorAll('circle.pt')].map((c) => +c.dataset.w)}))")
    assert [p["metric"] for p in panels] == [m["key"] for m in data["metrics"]]
    for panel in panels:
        finite = [p["w"] for p in data["points"] if isinstance(p.get(panel["metric"]), (int, float))]
        assert panel["ws"] == finite, panel
    assert len(panels[0]["ws"]) == len(ws)
    last = len(ws) - 1
    browser.click(f"svg.plot circle.pt[data-i='{last}']")
    strip = browser.evaluate("""(() => { const s = document.querySelector('#point-strip');
        return s && {i: +s.dataset.i, ws: [...s.querySelectorAll('img')].map((i) => +i.dataset.w),
                     srcs: [...s.querySelectorAll('img')].map((i) => i.getAttribute('src'))}; })()""")
    if data["points"][last]["images"] is not None and data["captions"]:
        assert strip["i"] == last and strip["ws"] == [ws[last]] * len(data["captions"])
    assert_clean(browser)
    return data


def test_browser_run_page(browser, written, artifacts):
    run, _ = written
    check_run_page(browser, run, expect_models=MODELS)

    # the table: intervals, paper values with Δ, "≈" markers, "–" for a non-finite value
    cells = browser.evaluate("""[...document.querySelectorAll('#results tbody tr')].map((tr) =>
        Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.dataset.key, td.textContent])))""")
    first = cells[0]
    assert first["fid"] == "13.45 [13.20, 13.70]paper 13.45 Δ +0.00"
    assert first["clip_score"] == "0.3310paper 0.3300 Δ +0.0010"
    assert cells[1]["model"] == f"{MODELS[1]} ≈" and cells[2]["fid"] == "8.29 ≈"
    assert cells[3]["fid"] == "–" and cells[3]["n"] == "30000"

    # sorting: numeric ascending, then descending; missing values last either way; text by name
    def order():
        return browser.evaluate("[...document.querySelectorAll('#results tbody tr')].map((tr) => tr.dataset.key)")

    browser.click("#results th[data-key=fid] button")
    assert order() == [MODELS[1], MODELS[2], MODELS[0], MODELS[3]]
    assert browser.evaluate("document.querySelector('#results th[data-key=fid]').getAttribute('aria-sort')") == \
        "ascending"
    browser.click("#results th[data-key=fid] button")
    assert order() == [MODELS[0], MODELS[2], MODELS[1], MODELS[3]]
    browser.click("#results th[data-key=precision] button")
    assert order() == [MODELS[3], MODELS[0], MODELS[2], MODELS[1]]
    browser.click("#results th[data-key=model] button")
    assert order() == sorted(MODELS)

    # the viewer: the escaped caption arrives as text; pages of 20; search by text and by #index
    rows = viewer_rows(browser)
    assert rows[0]["caption"] == NASTY and browser.evaluate("document.querySelectorAll('#viewer b').length") == 0
    assert len(rows) == 20 and rows[0]["cells"][3]["img"].endswith("/1.png")
    assert [row["cells"][2]["img"] for row in rows[4:6]] == ["run/gallery/merged/13.png", None]
    assert rows[6]["cells"][2]["img"].startswith("data:image/png;base64,")
    assert browser.evaluate("document.querySelector('#viewer-page').textContent") == "page 1 of 3"
    browser.click("#viewer-next")
    browser.click("#viewer-next-bottom")
    assert browser.evaluate("document.querySelector('#viewer-page-bottom').textContent") == "page 3 of 3"
    assert [row["index"] for row in viewer_rows(browser)] == [str(3 * i + 1) for i in range(40, 45)]
    assert browser.evaluate("document.querySelector('#viewer-next').disabled") is True
    browser.type_text("#viewer-search", "ZEBRA")
    shown = viewer_rows(browser)
    assert len(shown) == 5 and all("zebra" in row["caption"] for row in shown)
    count = browser.evaluate("document.querySelector('#viewer-count').textContent")
    assert count == "1–5 of 5 captions (filtered from 45)"
    browser.type_text("#viewer-search", "<on>")
    assert [row["caption"] for row in viewer_rows(browser)] == ['a cat <on> a "mat" & a dog']
    browser.type_text("#viewer-search", "#22")
    assert [row["index"] for row in viewer_rows(browser)] == ["22"]
    browser.type_text("#viewer-search", "no such caption")
    assert viewer_rows(browser) == [] and "No caption matches" in browser.evaluate(
        "document.querySelector('#viewer tbody').textContent")
    browser.type_text("#viewer-search", "")
    assert len(viewer_rows(browser)) == 20

    # images load from disk, the first row's in every column
    browser.wait_for("[...document.querySelectorAll('#viewer tbody tr:first-child img')]"
                     ".every((i) => i.complete && i.naturalWidth === 32)")
    browser.center("#viewer tbody tr[data-index='19'] td[data-model=merged] img")
    browser.wait_for("document.querySelector(\"#viewer tr[data-index='19'] td[data-model=merged] img\").naturalWidth")

    # per model sections; the card flags the deviation
    sections = browser.evaluate("""[...document.querySelectorAll('details.model')].map((d) => ({
        model: d.dataset.model, open: d.open, lowest: d.querySelectorAll('.lowest-clip figure').length,
        diverse: d.querySelectorAll('.least-diverse img').length,
        nonfinite: [...d.querySelectorAll('.nonfinite li')].map((li) => li.textContent)}))""")
    assert sections == [
        {"model": MODELS[0], "open": False, "lowest": 4, "diverse": 0, "nonfinite": []},
        {"model": MODELS[1], "open": True, "lowest": 0, "diverse": 4, "nonfinite": ["#10", "#22" + captions(8)[7]]},
    ]
    assert browser.evaluate("document.querySelector('.deviations li').textContent").startswith("⚠ captions")
    card = browser.evaluate("[...document.querySelectorAll('#protocol dt')].map((dt) => "
                            "[dt.textContent, dt.nextElementSibling.textContent])")
    assert card[1:] == [["samples per model", "30000"], ["resize", "PIL bicubic 512 → 299"],
                        ["extractors", "clean-fid inception, ViT-g-14"]]
    assert any(url.endswith("/1.png") for url in browser.requests)  # the images did go through the checks
    assert_clean(browser)
    print("run page screenshot:", browser.screenshot(artifacts / "run-page.png"))
    assert_clean(browser)


def test_browser_sweep_page(browser, written, artifacts):
    _, sweep = written
    check_sweep_page(browser, sweep)
    panels = browser.evaluate("[...document.querySelectorAll('svg.plot')].map((s) => "
                              "s.querySelectorAll('circle.pt').length)")
    assert panels == [5, 5, 5, 5]
    assert browser.evaluate("[...document.querySelectorAll('circle.pt.best')].map((c) => +c.dataset.w)") == [0.75] * 4

    # the best point is selected at first; hovering shows the numbers; a click shows that point's images
    open_page(browser, sweep)
    assert browser.evaluate("+document.querySelector('#point-strip').dataset.i") == 3
    browser.hover("svg.plot[data-metric=recall] circle.pt[data-i='1']")
    tip = browser.evaluate("document.querySelector('#tip').hidden ? null : document.querySelector('#tip').textContent")
    assert tip.splitlines() == ["w = 0.25  (λ = 0.75)", "FID 18.39  [17.99, 18.79]", "CLIP score 0.4501",
                                "precision 0.830", "recall 0.538"]
    assert browser.evaluate("document.querySelectorAll('circle.pt.hover').length") == 4
    browser.click("svg.plot[data-metric=fid] circle.pt[data-i='1']")
    strip = browser.evaluate("""[...document.querySelectorAll('#point-strip figure')].map((f) => ({
        index: f.dataset.index, src: f.querySelector('img').getAttribute('src'),
        caption: f.querySelector('figcaption').textContent}))""")
    assert [f["src"] for f in strip] == [f"sweep/w0.25/{i:08d}.png" for i in (0, 5, 10, 15, 20, 25)]
    assert [f["caption"] for f in strip] == [f"#{i}{c}" for i, c in zip((0, 5, 10, 15, 20, 25), captions(6))]
    assert browser.evaluate("document.querySelector('#point-summary').textContent").startswith("w = 0.25 (λ = 0.75)")
    browser.wait_for("[...document.querySelectorAll('#point-strip img')].every((i) => i.complete && i.naturalWidth)")

    # the points table sorts too, and a row click selects its point
    browser.click("#points th[data-key=fid] button")
    assert browser.evaluate("[...document.querySelectorAll('#points tbody tr')].map((tr) => tr.dataset.key)") == \
        ["w=0.75", "w=0.5", "w=1", "w=0.25", "w=0"]
    browser.click("#points tbody tr[data-key='w=1']")
    assert browser.evaluate("+document.querySelector('#point-strip').dataset.i") == 4
    browser.hover("svg.plot[data-metric=fid] circle.pt[data-i='4']")
    assert_clean(browser)
    print("sweep page screenshot:", browser.screenshot(artifacts / "sweep-page.png"))
    assert_clean(browser)


@pytest.mark.parametrize("name", ["demo.html", "demo-sweep-*.html"])
def test_browser_demo_pages(browser, name):
    """The demo's own pages, once ``bench.run --suite demo`` writes them beside the markdown reports."""
    found = sorted((REPO / "reports").glob(name))
    if not found:
        pytest.skip(f"reports/{name} not written (bench.run --suite demo writes it)")
    for path in found:
        if name == "demo.html":
            markdown = path.with_suffix(".md")
            expect = []
            if markdown.exists():  # the first column of the first markdown table, which lists every model
                text = markdown.read_text()
                table = text[text.index("\n| model |"):].strip().split("\n\n")[0].splitlines()
                expect = [line.split("|")[1].strip() for line in table[2:]]
            check_run_page(browser, path, expect_models=expect)
        else:
            check_sweep_page(browser, path)
