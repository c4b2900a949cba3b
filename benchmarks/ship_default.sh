#!/usr/bin/env bash
# Export the chosen student (dev-best among those passing the demo gate) as the built-in default model (edgeclip/models/default) and measure it
# (and record its duplicate threshold, benchmarks/duplicates.py --write-manifest):
# staging export with FP32 for verification, test-split R@K of FP32 vs INT8 vs FP16 through
# Embedder, the shipped bundle (FP16 for TensorRT + CPU INT8), and the latency of teacher vs student.
#   bash benchmarks/ship_default.sh        (after benchmarks/flickr8k_experiment.sh)
#   the WiSE merge (benchmarks/wise_sweep.py): RUNS=runs/r3x OUT=benchmarks/results/flickr8k-wise \
#     BEST=runs/r3x/cona-no-intra_ss-wise/a0.7/best BENCH=0 bash benchmarks/ship_default.sh
#   the soup x round-1 merge (benchmarks/soup_sweep.py), the default of session 8:
#     RUNS=runs/r3x OUT=benchmarks/results/flickr8k-soup BEST=runs/r3x/soup6/wise-i0.9-t0.8/best \
#     BENCH=0 bash benchmarks/ship_default.sh
#   the soup with an anchored student x round-1 merge, the shipped default since session 9:
#     RUNS=runs/r3x OUT=benchmarks/results/flickr8k-anchor \
#     BEST=runs/r3x/soup-anchor/wise-i0.9-t0.9/best BENCH=0 bash benchmarks/ship_default.sh
#   round 2 (issue 17): RUNS=runs/r2x TEACHER=runs/r2/mpnet-aug1-e8/best \
#     OUT=benchmarks/results/flickr8k-r2 bash benchmarks/ship_default.sh
# Env: BEST (a checkpoint dir; default: the dev-best student under $RUNS that passes the demo
# gate, see benchmarks/default_candidates.py), OUT (results dir),
# BENCH=0 (skip the latency step), BENCH_ONLY=1 (only the latency step).
set -euo pipefail
DATA="${DATA:-../shared/data/flickr8k}"
RUNS="${RUNS:-runs}"
OUT="${OUT:-benchmarks/results/flickr8k}"
if [ -z "${BEST:-}" ]; then
  # the dev-best student (chosen on dev, never test) among those passing the demo gate that CI
  # checks on the shipped default (benchmarks/default_candidates.py; its JSON lists every run)
  mapfile -t cands < <(for m in "$RUNS"/*/metrics.jsonl; do d=$(dirname "$m")
    case $(basename "$d") in teacher*|_*) ;; *) [ -f "$d/best/model.safetensors" ] && echo "$d";; esac; done)
  python benchmarks/default_candidates.py "${cands[@]}" --out "$OUT/default_candidates.json"
  chosen=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["chosen"] or "")' "$OUT/default_candidates.json")
  [ -n "$chosen" ] || { echo "no student passes the demo gate: the default stays as it is" >&2; exit 1; }
  BEST="$chosen/best"
fi
echo "shipping $BEST"
TEACHER="${TEACHER:-$RUNS/teacher/best}"
mkdir -p "$OUT" "$RUNS/export"
calib=(--target cpu --calib-data "$DATA" --calib-split train --calib-count 256 --eval-data "$DATA" --eval-split dev)

if [ "${BENCH_ONLY:-0}" != 1 ]; then
printf '{"run": "%s", "checkpoint": "%s"}\n' "$(basename "$(dirname "$BEST")")" "$BEST" > "$OUT/shipped.json"
# 1. staging bundle with FP32 (verification vs PyTorch, INT8 R@1 drop on dev)
rm -rf "$RUNS/export/student"
edgeclip export "$BEST" --out "$RUNS/export/student" --precision fp32,fp16,int8 "${calib[@]}"
# 2. test split through Embedder, each precision
for p in fp32 fp16 int8; do
  edgeclip eval --model "$RUNS/export/student" --data "$DATA" --split test --backend onnxruntime \
    --precision "$p" --json > "$OUT/shipped-$p.test.json"
done
# 3. the shipped bundle: FP16 (to build TensorRT engines) + CPU INT8 (Embedder() on any CPU)
rm -rf edgeclip/models/default
edgeclip export "$BEST" --out edgeclip/models/default --precision fp16,int8 "${calib[@]}"
# its near-duplicate threshold, chosen on dev photos and recorded in its manifest
python benchmarks/duplicates.py --data "$DATA" --write-manifest
fi
# 4. latency, teacher first (ratio column), same run, interleaved; needs a quiet machine
#    (BENCH=0 skips it and the teacher's export, e.g. while something else is training;
#    BENCH_ONLY=1 runs only this step)
[ "${BENCH:-1}" = 1 ] || { du -sh edgeclip/models/default; exit 0; }
# the teacher bundle, FP32 and INT8, for latency only
# (kept when it is newer than the teacher checkpoint: the same teacher gives the same graphs)
if [ ! "$RUNS/export/teacher/manifest.json" -nt "$TEACHER/model.safetensors" ]; then
  rm -rf "$RUNS/export/teacher"
  edgeclip export "$TEACHER" --out "$RUNS/export/teacher" --precision fp32,int8 "${calib[@]}" --allow-degraded
fi
peers=()  # from `python benchmarks/peers.py --out cache/peers` (random weights; latency only)
for p in cache/peers/vit-b-32 cache/peers/mobileclip-s0; do [ -d "$p" ] && peers+=("$p"); done
edgeclip-bench "$RUNS/export/teacher" "$RUNS/export/student" "${peers[@]}" --precision fp32,int8 --batch-sizes 1,8,32 \
  --duration 3 --threads 2 --json benchmarks/results/flickr8k_latency_raw.json \
  --csv benchmarks/results/flickr8k_latency.csv --plot benchmarks/results/flickr8k_latency.png
du -sh edgeclip/models/default
