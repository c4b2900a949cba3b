#!/usr/bin/env bash
# The Flickr8k experiment of the built-in default model (benchmarks/results/flickr8k.md):
# composite teacher, then students of one architecture and budget: clip, fd, cona, and cona with
# each edge family removed; test-split retrieval of every model at the end.
#   bash benchmarks/flickr8k_experiment.sh          (from the repository root; ~2 h on 2 CPU cores:
#                                                     teacher ~26 min, seven students ~90 min)
# Env: DATA (default ../shared/data/flickr8k), RUNS (runs), LANES (students trained at once,
# default 2, each with THREADS=1 thread: on a small CPU two 1-thread runs beat one 2-thread run),
# SKIP_TEACHER=1 to reuse $RUNS/teacher/best.
set -euo pipefail
DATA="${DATA:-../shared/data/flickr8k}"
RUNS="${RUNS:-runs}"
LANES="${LANES:-2}"
THREADS="${THREADS:-1}"
common=(--set "data.root=\"$DATA\"")

if [ "${SKIP_TEACHER:-0}" != 1 ]; then
  edgeclip distill --config configs/teacher.toml "${common[@]}" --set "train.threads=$((THREADS * LANES))" \
    --set "run.out=\"$RUNS/teacher\""
fi
student() {  # name [extra --set ...]
  local name=$1; shift
  edgeclip distill --config configs/student_cona.toml "${common[@]}" --set "train.threads=$THREADS" \
    --set "teacher.path=\"$RUNS/teacher/best\"" --set "run.out=\"$RUNS/$name\"" "$@" \
    > "$RUNS/$name.log" 2>&1
  echo "done: $name"
}
# fill the caches (student prefix, teacher embeddings) once, before the lanes share them
THREADS=$((THREADS * LANES)) student _warm-caches --set train.max_steps=1 --set train.eval_every_epochs=0
specs=(
  "student-cona"
  "student-clip --set loss.preset=clip"
  "student-fd --set loss.preset=fd"
  "cona-no-intra_ts --set loss.drop=intra_ts"
  "cona-no-inter_ts --set loss.drop=inter_ts"
  "cona-no-inter_ss --set loss.drop=inter_ss"
  "cona-no-intra_ss --set loss.drop=intra_ss"
)
export -f student; export DATA RUNS THREADS
printf '%s\n' "${specs[@]}" | xargs -P "$LANES" -I{} bash -c 'common=(--set "data.root=\"$DATA\""); eval "student {}"'

mkdir -p benchmarks/results/flickr8k
evals=(teacher student-cona student-clip student-fd cona-no-intra_ts cona-no-inter_ts cona-no-inter_ss cona-no-intra_ss)
printf '%s\n' "${evals[@]}" | xargs -P "$LANES" -I{} bash -c \
  'OMP_NUM_THREADS=$THREADS edgeclip eval --model "$RUNS/{}/best" --data "$DATA" --split test --json > "benchmarks/results/flickr8k/{}.test.json"'
mkdir -p benchmarks/results/flickr8k/metrics  # losses per edge and dev R@K per epoch, resolved configs
for r in "${evals[@]}"; do
  cp "$RUNS/$r/metrics.jsonl" "benchmarks/results/flickr8k/metrics/$r.jsonl"
  cp "$RUNS/$r/config.json" "benchmarks/results/flickr8k/metrics/$r.config.json"
done
echo "experiment done"
