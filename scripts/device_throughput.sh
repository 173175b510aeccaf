#!/usr/bin/env bash
# One GPU call: `python -m bench.throughput` on an H100/H200 machine, printing the table and writing the JSON,
# the markdown table and the log under $OUT (default /tmp/out). Run from the repository root with `.whl` carried:
# the machine's image has torch, transformers, pandas and nvidia-ml-py but not these (make them here, once):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#     diffusers==0.42.1 open_clip_torch==3.3.0 clean-fid==0.1.35 ftfy==6.3.1 wcwidth==0.2.13
# Extra arguments go to `python -m bench.throughput` (later ones win).
#
# Sizing, from the one H100 run of the earlier stages (reports/throughput.md), for a 7-minute call including the
# machine's start (~1-2 min) and the wheel install (~20 s); --budget-s 270 stops timed loops and skips what is left
# past it (rows say "not measured"), and a watchdog (budget + 90 s) ends a hung run with a traceback:
#   setup: imports, random SD 2.1 + ViT-g-14 + two Inceptions built on the GPU, FLOP count          ~30 s
#   generation, one step: naive batches 8-64 tried (2 batches each) then 256 images at ~45 img/s;
#     ours 32/64/128 tried eagerly, the winner compiled (~65 s, untimed) then 512 images          ~100 s
#   end to end, one step: naive 256 images with PNGs (~14 img/s) + clean-fid x2 + CLIP read-back;
#     ours 1,024 images (features warmed first) + its parts one at a time                         ~70 s
#   end to end, 25-step cfg 7.5 (PNDM): naive 64 images (~5 img/s) + read-back; ours recompiled at
#     the cfg batch (~50 s) then 64 images + one batch of parts                                    ~80 s
# The issue's 2,000-image equivalence (plain eager fp32-CLIP path vs the fast path; ~4 min) is a second call:
#   bash scripts/device_throughput.sh --only "" --ours-batches 64 --check-equivalence 2048 --budget-s 240 \
#     --out /tmp/out/equivalence.json
# Give each call timeout_s 480.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 -m bench.throughput \
  --out "$OUT/throughput.json" --n-multistep 64 --budget-s 270 "$@" 2>&1 | tee "$OUT/throughput.log"
status=$?
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for record in out.glob("*.json"):
    data = json.loads(record.read_text())
    equivalence = "".join(f"- {k}: {v}\n" for k, v in (data["equivalence"] or {}).items())
    (out / f"{record.stem}.md").write_text(f"Device: {data['device']}\n\n```\n{data['table']}\n```\n"
                                           + (f"\nEquivalence (plain vs fast path):\n{equivalence}" if equivalence else ""))
EOF
exit $status
