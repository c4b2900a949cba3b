#!/usr/bin/env bash
# The Flickr8k experiment of the built-in default model (benchmarks/results/flickr8k.md):
# composite teacher, then students of one architecture and budget: clip, fd, cona, and cona with
# each edge family removed. Test-split retrieval for every model at the end.
#   bash benchmarks/flickr8k_experiment.sh            (from the repository root; ~1.5 h on 2 CPU cores)
# DATA defaults to ../shared/data/flickr8k; set THREADS to the cores to use.
set -euo pipefail
DATA="${DATA:-../shared/data/flickr8k}"
THREADS="${THREADS:-2}"
RUNS="${RUNS:-runs}"
common=(--set "data.root=\"$DATA\"" --set "train.threads=$THREADS")

edgeclip distill --config configs/teacher.toml "${common[@]}" --set "run.out=\"$RUNS/teacher\""
student() {  # name preset [extra --set ...]
  local name=$1; shift
  edgeclip distill --config configs/student_cona.toml "${common[@]}" \
    --set "teacher.path=\"$RUNS/teacher/best\"" --set "run.out=\"$RUNS/$name\"" "$@"
}
student student-cona
student student-clip --set 'loss.preset="clip"'
student student-fd --set 'loss.preset="fd"'
for fam in intra_ts inter_ts inter_ss intra_ss; do
  student "cona-no-$fam" --set "loss.drop=[\"$fam\"]"
done
mkdir -p benchmarks/results/flickr8k
for m in teacher student-cona student-clip student-fd cona-no-intra_ts cona-no-inter_ts cona-no-inter_ss cona-no-intra_ss; do
  edgeclip eval --model "$RUNS/$m/best" --data "$DATA" --split test --json > "benchmarks/results/flickr8k/$m.test.json"
done
