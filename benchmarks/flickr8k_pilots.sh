#!/usr/bin/env bash
# How the students' training budget and the `cona` edge losses were chosen: one-epoch pilots of the
# default student, scored on the dev split (never test). benchmarks/flickr8k_report.py lists them
# in benchmarks/results/flickr8k.md ("Choosing the budget on dev").
#   bash benchmarks/flickr8k_pilots.sh     (~20 min on 2 CPU cores; needs runs/teacher/best)
# The pilots ran before `cona` got its present defaults, so each one spells out its edges.
set -euo pipefail
DATA="${DATA:-../shared/data/flickr8k}"
RUNS="${RUNS:-runs}"
pilot() {  # name [extra --set ...]
  local name=$1; shift
  edgeclip distill --config configs/student_cona.toml --set "data.root=\"$DATA\"" \
    --set "teacher.path=\"$RUNS/teacher/best\"" --set train.threads=1 --set train.epochs=1 \
    --set train.warmup_steps=20 --set "run.out=\"$RUNS/pilot/$name\"" "$@" > "$RUNS/pilot/$name.log" 2>&1
  echo "done: $name"
}
mkdir -p "$RUNS/pilot"
# the cona graph as it was before the pilots: fd on TI-SI/TT-ST (weight 1), infonce on TI-ST, TT-SI, SI-ST
old=(--set 'loss.edges.TI-SI={weight=1.0, losses=["fd"]}' --set 'loss.edges.TT-ST={weight=1.0, losses=["fd"]}'
     --set 'loss.edges.TI-ST={weight=1.0, losses=["infonce"]}' --set 'loss.edges.TT-SI={weight=1.0, losses=["infonce"]}'
     --set 'loss.edges.SI-ST={weight=1.0, losses=["infonce"]}')
m1=(--set train.backbone_lr_mult=1.0)
fd10=(--set loss.edges.TI-SI.weight=10 --set loss.edges.TT-ST.weight=10)
sd_ts=(--set 'loss.edges.TI-ST.losses=["sd"]' --set 'loss.edges.TT-SI.losses=["sd"]')
(  # two lanes of one thread each
  pilot P1-cona "${old[@]}"
  pilot P3-cona-m1-fd10 "${old[@]}" "${m1[@]}" "${fd10[@]}"
  pilot P5-cona-m1-fd3 "${old[@]}" "${m1[@]}" --set loss.edges.TI-SI.weight=3 --set loss.edges.TT-ST.weight=3
  pilot P7-cona-m1-fd10-interts_sd "${old[@]}" "${m1[@]}" "${fd10[@]}" "${sd_ts[@]}"
) &
(
  pilot P2-cona-m1 "${old[@]}" "${m1[@]}"
  pilot P4-fd-m1 --set loss.preset=fd "${m1[@]}"
  pilot P6-cona-m1-lr3 "${old[@]}" "${m1[@]}" --set train.lr=3e-3
  pilot P8-cona-m1-fd10-sd_all "${old[@]}" "${m1[@]}" "${fd10[@]}" "${sd_ts[@]}" \
    --set 'loss.edges.SI-ST.losses=["infonce","sd"]'
) &
wait
