"""``--suite hpsv2``: SwiftBrush v2's Table 4, the HPS v2 benchmark through the same engine as COCO.

The benchmark's prompts are four JSON lists of strings, one per style (``anime``, ``concept-art``, ``paintings``,
``photo``: 800 each in the HPD v2 dataset's ``benchmark/`` folder), given with ``--hps-prompts DIR``. Every prompt
gets one image (sample i is prompt i of the styles in that order, with the bench's per-sample noise), scored with
the HPS v2 or v2.1 reward model (``--hps-weights FILE``, ``bench.features.hps``) as the ``hpsv2`` package scores it
(``bench.metrics.hps``). No reference images: the score compares each image with its own prompt. The images are
scored as generated; ``hpsv2.evaluate`` reads them back from JPEG files, which this skips.
"""

import json
from functools import partial
from pathlib import Path

import numpy as np

from bench.errors import UserError
from bench.protocol import Protocol, read_utf8
from bench.registry import MODELS
from bench.scores import PAPER_HPS, Scorer
from bench.suites import Suite

STYLES = ("anime", "concept-art", "paintings", "photo")  # hpsv2's own order
PROMPTS_URL = "https://huggingface.co/datasets/zhwang/HPDv2/tree/main/benchmark"


def read_prompts(folder: str | Path | None) -> dict[str, list[str]]:
    """``{style: prompts}`` from ``DIR/<style>.json``, each a JSON list of strings."""
    if not folder:
        raise UserError(f"--suite hpsv2 needs --hps-prompts DIR holding {', '.join(s + '.json' for s in STYLES)} "
                        f"(published at {PROMPTS_URL})")
    folder = Path(folder)
    if missing := [f"{style}.json" for style in STYLES if not (folder / f"{style}.json").is_file()]:
        raise UserError(f"HPS prompt files missing in {folder} ({', '.join(missing)}): pass --hps-prompts DIR "
                        f"holding {', '.join(s + '.json' for s in STYLES)} (published at {PROMPTS_URL})")
    prompts = {}
    for style in STYLES:
        path = folder / f"{style}.json"
        try:
            data = json.loads(read_utf8(path, "HPS prompt file", "pass --hps-prompts DIR"))
        except ValueError as error:
            raise UserError(f"HPS prompt file {path} is not JSON ({error}); pass --hps-prompts DIR") from None
        if not isinstance(data, list) or not data:
            raise UserError(f"HPS prompt file {path} is not a non-empty JSON list of strings; pass --hps-prompts DIR")
        if bad := [i for i, prompt in enumerate(data) if not isinstance(prompt, str)]:
            raise UserError(f"HPS prompt file {path}: entry {bad[0]} is {data[bad[0]]!r}, not a string")
        prompts[style] = data
    return prompts


def hps_table(samples: dict, reference: dict, texts: dict, device: str = "cpu",
              styles=None) -> tuple[dict, dict, dict]:
    """HPS per style and on average, from the ``hps`` role's image and prompt features, each with the normal
    interval of its mean."""
    from bench.metrics.hps import benchmark_scores, hps_scores
    from bench.metrics.intervals import mean_interval

    indices = samples["indices"]
    scores, style = hps_scores(samples["features_hps"], texts["hps"][indices]), styles[indices]
    table = benchmark_scores(scores, style)
    for name in list(table):
        values = scores if name == "average" else scores[style == name]
        if len(values) > 1:
            bounds = mean_interval(values, name)
            shift = table[name] - bounds[name]  # centred on the score as hpsv2 reports it (chunk means)
            table[f"{name}_lo"], table[f"{name}_hi"] = bounds[f"{name}_lo"] + shift, bounds[f"{name}_hi"] + shift
    return table, {"hps_scores": scores}, {}


def hpsv2_suite(config) -> Suite:
    from bench.features.hps import resolve_weights, version_of

    prompts = read_prompts(config.hps_prompts)
    weights = resolve_weights(config.hps_weights)
    captions = [prompt for style in STYLES for prompt in prompts[style]]
    styles = np.array([style for style in STYLES for _ in prompts[style]])
    if config.n is not None and config.n != len(captions):
        raise UserError(f"--n {config.n}: the HPS benchmark is every prompt of the four files ({len(captions)}); "
                        "drop --n")
    protocol = Protocol(name="hpsv2-benchmark", captions=tuple(captions),
                        caption_ids=tuple(f"{style}:{i}" for style in STYLES for i in range(len(prompts[style]))),
                        metric_resolution=0, resize="none", clip_prefix="", reference=None,
                        to_metric_images=lambda images: images)
    scorer = Scorer(partial(hps_table, styles=styles), (*STYLES, "average"), dict.fromkeys((*STYLES, "average"), 2),
                    PAPER_HPS, note="HPS = 100 x cosine of the HPS model's image and prompt embeddings; a style's "
                                    "score is the mean of its 80-prompt chunk means, as the hpsv2 package reports.")
    card = {"prompts": ", ".join(f"{style} {len(prompts[style])}" for style in STYLES),
            "HPS weights": f"{weights.name} ({version_of(weights)})", "images": "as generated (no JPEG round trip)"}
    return Suite(name="hpsv2", title="HPS v2 benchmark, SwiftBrush v2 Table 4", protocol=protocol,
                 registry=dict(MODELS), default_models=("sd21-cfg7.5", "sdturbo", "instaflow", "swiftbrush", "sbv2"),
                 extractors={"hps": ("hps", {"weights": str(weights)})}, out=Path("results/hpsv2"), batch_size=16,
                 shard_size=800, scorer=scorer, card=card,
                 notes="Paper numbers: SwiftBrush v2 (arXiv 2408.14176) Table 4, in the HPS authors' style order "
                       "(docs/protocol.md).")
