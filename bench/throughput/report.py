"""The throughput table, its targets and its JSON record."""

import json
from pathlib import Path

from bench.store import atomic_write_text

PEAK_TFLOPS = 800.0  # dense fp16/bf16 matmul on one H100 or H200 (an 8192^3 bf16 product runs at ~790-798 TFLOP/s)
# comparison -> (ratio at least, images/s at least or None, stretch images/s or None): the targets.
TARGETS = {"generation_1step": (1.5, None, 110.0), "end_to_end_1step": (3.0, 85.0, None),
           "end_to_end_25step": (2.0, None, None)}


def fmt(value, spec=".1f", missing="n/a"):
    return missing if value is None else format(value, spec)


def verdict(name: str, row: dict, on_gpu: bool) -> str:
    low, rate, stretch = TARGETS[name]
    if row.get("ratio") is None:
        return "not measured"
    if not on_gpu:
        return "targets: H100/H200 only"
    met = row["ratio"] >= low and (rate is None or row["ours_img_s"] >= rate)
    words = [f">= {low:g}x" + (f" and >= {rate:g} img/s" if rate else "") + (": met" if met else ": MISSED")]
    if stretch:
        words.append(f"stretch {stretch:g} img/s: {'met' if row['ours_img_s'] >= stretch else 'not met'}")
    return "; ".join(words)


def clocks(row: dict) -> str:
    if row.get("sm_clock_mhz") is None:
        return ""
    return f" [SM {row['sm_clock_mhz']:.0f} MHz, min {row['sm_clock_min_mhz']:.0f}; {row['power_w']:.0f} W]"


def table(comparisons: dict, meta: dict) -> str:
    """One line per side of each comparison, the ratio and the target on our line, our parts underneath."""
    on_gpu = meta["device_type"] == "cuda"
    lines = [f"{'comparison / side':<34}{'batch':>6}{'images':>7}{'wall s':>8}{'img/s':>8}{'ratio':>7}"
             f"{'TFLOP/s':>9}{'% peak':>8}{'GPU busy':>9}  target"]
    for name, row in comparisons.items():
        for side in ("naive", "ours"):
            r = row.get(side)
            if r is None:
                lines.append(f"{row['label'] + ' / ' + side:<34}  not measured ({row.get('error', 'skipped')})")
                continue
            tflops = r["img_s"] * row["flops_per_image"] / 1e12
            ratio = fmt(row.get("ratio"), ".2f") if side == "ours" else ""
            busy = fmt(r["gpu_busy"] * 100 if r.get("gpu_busy") is not None else None)
            lines.append(f"{row['label'] + ' / ' + side:<34}{r['batch']:>6}{r['images']:>7}{r['wall_s']:>8.1f}"
                         f"{r['img_s']:>8.2f}{ratio:>7}{tflops:>9.2f}"
                         f"{fmt(tflops / PEAK_TFLOPS * 100 if on_gpu else None):>8}{busy:>9}  "
                         f"{verdict(name, row, on_gpu) if side == 'ours' else ''}{clocks(r)}"
                         f"{' (TRUNCATED by --budget-s)' if r['truncated'] else ''}")
            parts = r.get("components_ms_per_image")
            if parts:
                total = sum(value for part, value in parts.items() if "(in latents)" not in part)
                lines.append(f"    parts, one at a time ({1e3 / r['img_s']:.2f} ms/img in the run; parts sum "
                             f"{total:.2f}): " + "; ".join(f"{part} {value:.2f}" for part, value in parts.items()))
    lines.append(f"TFLOP/s: the comparison's work per image (generation, + 2 Inception + CLIP passes end to end) x "
                 f"img/s; % peak of {PEAK_TFLOPS:.0f} dense fp16, n/a off a GPU; batch: each side's best of its "
                 f"candidates; CLIP {meta['clip_precision']}; our generation {meta['compile']}")
    return "\n".join(lines)


def save(path: Path, meta: dict, comparisons: dict, equivalence) -> None:
    payload = {"device": meta["device"], "comparisons": comparisons, "equivalence": equivalence, "meta": meta,
               "table": table(comparisons, meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))
