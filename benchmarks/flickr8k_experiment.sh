#!/usr/bin/env bash
# The Flickr8k experiment of the built-in default model (benchmarks/results/flickr8k.md):
# composite teacher, then students of one architecture and budget: clip, fd, cona, and cona with
# each edge family removed; test-split retrieval of every model at the end.
#   bash benchmarks/flickr8k_experiment.sh          (from the repository root; ~2 h on 2 CPU cores:
#                                                     teacher ~26 min, seven students ~90 min)
#   ROUND=2 bash benchmarks/flickr8k_experiment.sh  round 2 (issue 17): the teacher with a frozen
#                                                     all-mpnet-base-v2 text tower and one
#                                                     augmented view, 8 epochs; runs in runs/r2x
#   ROUND=3 bash benchmarks/flickr8k_experiment.sh  round 3: round 2's teacher with all 5 captions
#                                                     of each image in every step and its unfrozen
#                                                     Lite2 blocks at lr x0.3; runs in runs/r3x
# Env: DATA (default ../shared/data/flickr8k), RUNS (runs; round 2: runs/r2x), LANES (students
# trained at once, default 2, each with THREADS=1 thread: on a small CPU two 1-thread runs beat
# one 2-thread run), SKIP_TEACHER=1 to reuse $TEACHER (default $RUNS/teacher/best),
# TEACHER_SETS (extra --set arguments of the teacher run), SEEDS (run.seed values of the clip,
# fd and cona students, default "0"; seed s > 0 writes student-NAME-sS), STUDENTS (which of
# cona clip fd no-intra_ts no-inter_ts no-inter_ss no-intra_ss, default all).
set -euo pipefail
DATA="${DATA:-../shared/data/flickr8k}"
ROUND="${ROUND:-1}"
if [ "$ROUND" = 2 ]; then
  RUNS="${RUNS:-runs/r2x}"
  TEACHER_SETS="${TEACHER_SETS:---set 'model.name=\"lite2-mpnet\"' --set data.augment_views=1 --set train.epochs=8 --set train.eval_every_epochs=2}"
elif [ "$ROUND" = 3 ]; then
  RUNS="${RUNS:-runs/r3x}"
  TEACHER_SETS="${TEACHER_SETS:---set 'model.name=\"lite2-mpnet\"' --set data.augment_views=1 --set data.captions_per_image=5 --set train.backbone_lr_mult=0.3 --set train.epochs=8 --set train.eval_every_epochs=2}"
fi
RUNS="${RUNS:-runs}"
LANES="${LANES:-2}"
THREADS="${THREADS:-1}"
TEACHER="${TEACHER:-$RUNS/teacher/best}"
SEEDS="${SEEDS:-0}"
STUDENTS="${STUDENTS:-cona clip fd no-intra_ts no-inter_ts no-inter_ss no-intra_ss}"
common=(--set "data.root=\"$DATA\"")
mkdir -p "$RUNS"

if [ "${SKIP_TEACHER:-0}" != 1 ]; then
  eval edgeclip distill --config configs/teacher.toml '"${common[@]}"' \
    --set "train.threads=$((THREADS * LANES))" --set "'run.out=\"$RUNS/teacher\"'" \
    "${TEACHER_SETS:-}"
fi
student() {  # name [extra --set ...]
  local name=$1; shift
  edgeclip distill --config configs/student_cona.toml "${common[@]}" --set "train.threads=$THREADS" \
    --set "teacher.path=\"$TEACHER\"" --set "run.out=\"$RUNS/$name\"" "$@" \
    > "$RUNS/$name.log" 2>&1
  echo "done: $name"
}
# fill the caches (student prefix, teacher embeddings) once, before the lanes share them
THREADS=$((THREADS * LANES)) student _warm-caches --set train.max_steps=1 --set train.eval_every_epochs=0
declare -A SPEC=(
  [cona]="" [clip]="--set loss.preset=clip" [fd]="--set loss.preset=fd"
  [no-intra_ts]="--set loss.drop=intra_ts" [no-inter_ts]="--set loss.drop=inter_ts"
  [no-inter_ss]="--set loss.drop=inter_ss" [no-intra_ss]="--set loss.drop=intra_ss"
)
specs=()
evals=()
for st in $STUDENTS; do
  [ -n "${SPEC[$st]+x}" ] || { echo "unknown student $st (known: ${!SPEC[*]})" >&2; exit 1; }
  case $st in
    cona|clip|fd)
      for seed in $SEEDS; do
        name="student-$st"; [ "$seed" = 0 ] || name="$name-s$seed"
        specs+=("$name ${SPEC[$st]} --set run.seed=$seed"); evals+=("$name")
      done ;;
    *) specs+=("cona-$st ${SPEC[$st]}"); evals+=("cona-$st") ;;
  esac
done
export -f student; export DATA RUNS THREADS TEACHER
printf '%s\n' "${specs[@]}" | xargs -P "$LANES" -I{} bash -c 'common=(--set "data.root=\"$DATA\""); eval "student {}"'
[ "${SKIP_TEACHER:-0}" = 1 ] || evals=(teacher "${evals[@]}")

RESULTS="benchmarks/results/flickr8k"; [ "$ROUND" = 1 ] || RESULTS="$RESULTS-r$ROUND"
mkdir -p "$RESULTS"
printf '%s\n' "${evals[@]}" | xargs -P "$LANES" -I{} bash -c \
  "OMP_NUM_THREADS=$THREADS edgeclip eval --model \"$RUNS/{}/best\" --data \"$DATA\" --split test --json > \"$RESULTS/{}.test.json\""
mkdir -p "$RESULTS/metrics"  # losses per edge and dev R@K per epoch, resolved configs
for r in "${evals[@]}"; do
  cp "$RUNS/$r/metrics.jsonl" "$RESULTS/metrics/$r.jsonl"
  cp "$RUNS/$r/config.json" "$RESULTS/metrics/$r.config.json"
done
echo "experiment done"
