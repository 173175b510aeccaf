#!/usr/bin/env bash
# One GPU call: python -m bench.throughput on the device machine (see bench/throughput.py).
# Run from the repository root with `.whl` carried (diffusers, open_clip_torch, clean-fid, ftfy, wcwidth are not
# installed there); OUT is the folder whose files come back.
# Make .whl here with: pip download --no-deps -d .whl diffusers==0.42.1 open_clip_torch==3.3.0 clean-fid==0.1.35 ftfy wcwidth
#
# Sizing, from the one H100 run (reports/throughput.md), about 6 minutes:
#   setup (imports, random SD 2.1 + ViT-g-14 + Inception built on the GPU, FLOP count)            ~30 s
#   naive one-step, 512 images (--naive-max-images): 43.7 img/s + 48 ms/PNG inline (one core)    ~37 s
#   ours one-step, 2048 images (the 2,000-image GPU-busy run): compile UNet ~50 s + VAE
#     ~15 s (warm-up, untimed), then 35-100 s (60 img/s hoped, 20 img/s as last measured)       ~100-170 s
#   naive 25-step cfg 7.5, 128 images at 4.9 img/s with PNGs, plus one warm-up batch of 16      ~30 s
#   ours 25-step, 128 images: UNet recompiled at the cfg batch (~50 s) + warm-up batch of 64     ~75 s
#   parts of both our stages timed one at a time (--components; 25-step: one batch of latents)  ~20 s
#   equivalence, 256 one-step images (plain eager fp32-CLIP path + fast path, two 2048-d FIDs)  ~25 s
# --budget-s 360 stops timed loops and skips stages past it (partial rows are marked; at the slow rate the
# equivalence is what goes), and the watchdog (budget + 90 s) ends a hung run with a traceback. JSON + table
# are rewritten after each stage. Give the call timeout_s 480.
# The 2,000-image equivalence, as a second call on the warm machine if >= 5 minutes remain (~4 min):
#   bash scripts/device_throughput.sh --skip-naive --n-onestep 0 --n-multistep 0 --no-components \
#     --check-equivalence 2048 --budget-s 240
# channels_last is off: the one H100 run used it eagerly and its VAE decode ran slower than the reference's
# contiguous eager rate (reports/throughput.md); pass --channels-last to compare.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 -m bench.throughput \
  --out "$OUT/throughput.json" --batch-size 64 --n-onestep 2048 --naive-max-images 512 --n-multistep 128 \
  --check-equivalence 256 --compile --cudnn-benchmark --clip-precision fp16 --budget-s 360 "$@" 2>&1 | tee "$OUT/throughput.log"
