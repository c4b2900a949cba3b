#!/usr/bin/env bash
# Round 2 teacher pilots (issue 17), scored on DEV only: the round-1 teacher recipe
# (configs/teacher.toml) at a short budget against one lever at a time.
#   bash benchmarks/flickr8k_round2_pilots.sh [PILOT ...]     (from the repository root)
# then `python benchmarks/flickr8k_round2_collect.py` writes
# benchmarks/results/flickr8k_round2_pilots.json (config, dev mean recall per epoch, wall time,
# load average). Env: RUNS (default runs/r2), EPOCHS (default 2), THREADS (default 1), DATA,
# SUBSET (default 0 = all 6,000 training images; N = a fixed random N of them, data.train_images),
# EVAL_EVERY (dev evaluation every N epochs, default 1), SEED (run.seed, default 0).
# Pilots (each `edgeclip distill --config configs/teacher.toml` plus):
#   base        nothing else
#   aug1        data.augment_views=1 (plain + 1 crop/flip view per image, drawn per epoch)
#   aug4        data.augment_views=4
#   mpnet       model.name="lite2-mpnet" (frozen all-mpnet-base-v2 + linear head; needs the
#               pieces: EDGECLIP_MPNET_PARTS or the installed wheels, see edgeclip/distill/mpnet.py)
#   mpnet-aug1  both
#   mpnet-mlp-aug1  mpnet-aug1 with a two-layer head (hidden 1024) on the frozen MPNet features
#   unfreeze16  model.config.image.freeze_blocks=16 (another prefix cache)
#   mpnet-k5-aug1       mpnet-aug1 with all 5 captions of each image in every step
#                       (data.captions_per_image=5; grouped InfoNCE, edgeclip/distill/losses.py)
#   mpnet-k5-aug1-m03   the same with the unfrozen Lite2 blocks at lr x0.3 (x0.1 otherwise)
set -euo pipefail
RUNS="${RUNS:-runs/r2}"
EPOCHS="${EPOCHS:-2}"
THREADS="${THREADS:-1}"
SUBSET="${SUBSET:-0}"
EVAL_EVERY="${EVAL_EVERY:-1}"
SEED="${SEED:-0}"
DATA="${DATA:-../shared/data/flickr8k}"
mkdir -p "$RUNS"
declare -A EXTRA=(
  [base]=""
  [aug1]="--set data.augment_views=1"
  [aug4]="--set data.augment_views=4"
  [mpnet]="--set model.name=\"lite2-mpnet\""
  [mpnet-aug1]="--set model.name=\"lite2-mpnet\" --set data.augment_views=1"
  [mpnet-mlp-aug1]="--set model.name=\"lite2-mpnet\" --set data.augment_views=1 --set model.config.text.head_hidden=1024"
  [unfreeze16]="--set model.config.image.freeze_blocks=16"
  [mpnet-k5-aug1]="--set model.name=\"lite2-mpnet\" --set data.augment_views=1 --set data.captions_per_image=5"
  [mpnet-k5-aug1-m03]="--set model.name=\"lite2-mpnet\" --set data.augment_views=1 --set data.captions_per_image=5 --set train.backbone_lr_mult=0.3"
)
for name in "${@:-base aug1}"; do
  for p in $name; do
    [ -n "${EXTRA[$p]+x}" ] || { echo "unknown pilot $p (known: ${!EXTRA[*]})" >&2; exit 1; }
    out="$RUNS/$p-e$EPOCHS"
    [ "$SUBSET" = 0 ] || out="$out-n$SUBSET"
    [ "$SEED" = 0 ] || out="$out-s$SEED"
    start=$(date -u +%s)
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    eval edgeclip distill --config configs/teacher.toml --set "data.root=\"$DATA\"" \
      --set "train.threads=$THREADS" --set "train.epochs=$EPOCHS" --set "run.out=\"$out\"" \
      --set "data.train_images=$SUBSET" --set "train.eval_every_epochs=$EVAL_EVERY" \
      --set "run.seed=$SEED" \
      "${EXTRA[$p]}" > "$out.log" 2>&1
    end=$(date -u +%s)
    printf '{"pilot": "%s", "epochs": %s, "train_images": %s, "threads": %s, "wall_s": %s, "start_utc": "%s", "loadavg_start": "%s", "loadavg_end": "%s", "extra": "%s"}\n' \
      "$p" "$EPOCHS" "$SUBSET" "$THREADS" "$((end - start))" "$(date -u -d @"$start" +%FT%TZ)" "$load0" \
      "$(cut -d' ' -f1-3 /proc/loadavg)" "${EXTRA[$p]//\"/\\\"}" > "$out.time.json"
    echo "done: $p ($((end - start)) s)"
  done
done
