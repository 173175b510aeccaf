"""The throughput table and its JSON record."""

import json
from pathlib import Path

from bench.store import atomic_write_text

PEAK_TFLOPS = 800.0  # dense fp16/bf16 matmul on one H100 (8192^3 bf16 product measured at ~798 TFLOP/s)
TARGETS = {"ours-1step": (2.0, 3.0, 140.0), "ours-25step": (1.5, 2.0, None)}  # (x naive, stretch x, stretch img/s)
BUSY_TARGET = 0.90


def fmt(value, spec=".1f", missing="n/a"):
    return missing if value is None else format(value, spec)


def table(results: dict, meta: dict) -> str:
    on_gpu = meta["device_type"] == "cuda"
    lines = [f"{'stage':<30}{'images':>7}{'warm-up s':>10}{'wall s':>8}{'img/s':>8}{'x naive':>8}{'TFLOP/s':>9}"
             f"{'% peak':>8}{'GPU busy':>9}  targets / notes"]
    for name, r in results.items():
        tflops = r["img_s"] * r["flops_per_image"] / 1e12
        ratio, note = r.get("x_naive"), ""
        if "img_s_without_png" in r:
            note = f"{fmt(r['img_s_without_png'])} img/s without the PNG saves"
        elif name.startswith("ours"):
            low, stretch, stretch_img_s = TARGETS.get(name, TARGETS["ours-25step"])
            met = "n/a" if ratio is None else "met" if ratio >= low else "MISSED"
            busy = "n/a" if r["gpu_busy"] is None else "met" if r["gpu_busy"] >= BUSY_TARGET else "MISSED"
            stretch = f"{stretch:g}x" + (f" / {stretch_img_s:.0f} img/s" if stretch_img_s else "")
            note = (f">={low:g}x: {met} (stretch {stretch}); busy >={BUSY_TARGET:.0%}: {busy}; "
                    f"x{fmt(r.get('x_naive_without_png'), '.2f')} vs naive w/o PNG")
        lines.append(f"{r['label']:<30}{r['images']:>7}{r['warmup_s']:>10.1f}{r['wall_s']:>8.1f}{r['img_s']:>8.2f}"
                     f"{fmt(ratio, '.2f'):>8}{tflops:>9.2f}{fmt(tflops / PEAK_TFLOPS * 100 if on_gpu else None):>8}"
                     f"{fmt(r['gpu_busy'] * 100 if r.get('gpu_busy') is not None else None):>9}  {note}"
                     f"{' (TRUNCATED by --budget-s)' if r['truncated'] else ''}")
        parts = r.get("components_ms_per_image")
        if parts:
            total = sum(value for part, value in parts.items() if "(in latents)" not in part)
            lines.append(f"    parts, one at a time (stage: {1e3 / r['img_s']:.2f} ms/img; parts sum {total:.2f}): "
                         + "; ".join(f"{part} {value:.2f}" for part, value in parts.items()))
    lines.append(f"% peak: of {PEAK_TFLOPS:.0f} TFLOP/s dense fp16 (H100), n/a off a GPU; FLOPs per image: text "
                 "encoder and UNet x steps x (2 if cfg), VAE decoder, + Inception + CLIP image tower for ours; "
                 "warm-up (untimed) holds torch.compile; CLIP " + meta["clip_precision"])
    return "\n".join(lines)


def save(path: Path, meta: dict, results: dict, equivalence) -> None:
    text = table(results, meta)
    payload = {"meta": meta, "stages": results, "equivalence": equivalence, "table": text}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))
