#!/usr/bin/env bash
# Issues 15 and 23's study: FISA against a frozen-CLIP classifier and full fine-tuning on the broad synthetic world,
# where CLIP's pre-training knows concepts segmentation training never shows, so there is something to lose; then
# SIMO alone and SEVE variants meant to keep that knowledge, each on 3 seeds.
# Every step is a project command; a finished step is skipped when the script is run again.
#
#   nice -n 19 benchmarks/study/run-study.sh        # the study (RUNS=runs/study)
#   RUNS=runs/smoke PRETRAIN=64 TRAIN=64 VAL=24 CLIP_STEPS=4 GEN_STEPS=4 ADAPT_STEPS=6 SNAPSHOTS="2 4" \
#     SEEDS=0 COST_STEPS=1 COST_ROUNDS=1 benchmarks/study/run-study.sh   # a smoke run: proves the pipeline only
#
# Lengths: about 115 minutes of one thread's CPU time, measured step by step (docs/training.md, "The study"),
# before simo-only was added (its 600 steps: about 6 minutes per seed, 590-599 ms/step on one thread).
# Settings are environment variables (defaults below): RUNS, PRETRAIN, TRAIN, VAL, CLIP_STEPS, GEN_STEPS,
# ADAPT_STEPS, SNAPSHOTS, SEEDS, METHODS, DISTILL_WEIGHTS, SELECT_SEED, JOBS, THRESHOLD, COST_STEPS, COST_ROUNDS.
# -h/--help prints this header.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the header above is the help
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
STUDY=$(cd "$(dirname "$0")" && pwd)  # its scripts by their path, so the study runs from any folder
RUNS=${RUNS:-runs/study}
PRETRAIN=${PRETRAIN:-3000}; TRAIN=${TRAIN:-3000}; VAL=${VAL:-300}
CLIP_STEPS=${CLIP_STEPS:-1000}; GEN_STEPS=${GEN_STEPS:-1000}
ADAPT_STEPS=${ADAPT_STEPS:-600}; SNAPSHOTS=${SNAPSHOTS:-"100 300"}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"frozen simo full simo-only seve-late seve-slow-gate simo-only-wise simo-wise"}
DISTILL_WEIGHTS=${DISTILL_WEIGHTS:-"10 100"}; SELECT_SEED=${SELECT_SEED:-0}
JOBS=${JOBS:-1}
THRESHOLD=${THRESHOLD:-0.1}  # panoptic object threshold for every method (calibrated for the default world's model)
COST_STEPS=${COST_STEPS:-8}; COST_ROUNDS=${COST_ROUNDS:-2}
DATA="$RUNS/data"
mkdir -p "$RUNS"
# 1. the broad world: pretrain (every concept), train (seen concepts only), val (seen, novel composition, novel concept)
[ -f "$DATA/annotations/panoptic_val.json" ] || \
  fisa-rt make-data --world broad --out "$DATA" --pretrain "$PRETRAIN" --train "$TRAIN" --val "$VAL" --seed 0
# 2. stage 1: CLIP pre-trained on the broad captions and region crops
[ -f "$RUNS/clip.safetensors" ] || fisa-rt train clip --split pretrain --data "$DATA" --out "$RUNS/clip.safetensors" \
  --steps "$CLIP_STEPS" --batch-size 32 --lr 1e-3 --warmup 100 --weight-decay 0.1 --region-captions 0.5 --no-progress \
  | tee "$RUNS/clip.log"
[ -s "$RUNS/clip-crop-accuracy.txt" ] || python "$STUDY/clip-crop-accuracy.py" "$RUNS/clip.safetensors" \
  "$DATA" | tee "$RUNS/clip-crop-accuracy.txt"
# 3. stage 2: the mask generator, on seen classes only; its masks on each group
[ -f "$RUNS/generator.safetensors" ] || fisa-rt train generator --data "$DATA" --init "$RUNS/clip.safetensors" \
  --out "$RUNS/generator.safetensors" --steps "$GEN_STEPS" --batch-size 16 --lr 5e-4 --warmup 100 --no-progress \
  | tee "$RUNS/generator.log"
[ -s "$RUNS/mask-quality.json" ] || python "$STUDY/mask-quality.py" "$RUNS/generator.safetensors" "$DATA" \
  --json "$RUNS/mask-quality.json"
# 4. stage 3, each method and seed; snapshots give the accuracy-against-length curve of one schedule.
#    frozen, simo (FISA), full, simo-only: the presets (simo-only added after the ablation, issue 15); then issue 23's
#    SEVE variants: adapters after blocks 3-4, gates opening at a tenth of the rate, and feature preservation, whose
#    weight is chosen among DISTILL_WEIGHTS on seed SELECT_SEED by seen-class accuracy alone (pick-distill-weight.py)
#    simo-only-wise and simo-wise: the weight ensemble (WiSE-FT, alpha 0.5, fixed in advance) of SIMO alone and of
#    FISA; every other method writes its trained weights unmixed (--weight-ensemble 1)
adapt_flags() {
  case $1 in
    frozen|simo|simo-only) echo "--trainable $1 --lr 1e-3 --weight-ensemble 1" ;;
    full) echo "--trainable full --lr 2e-4 --weight-ensemble 1" ;;
    seve-late) echo "--trainable simo --lr 1e-3 --seve-layers 3 4 --weight-ensemble 1" ;;
    seve-slow-gate) echo "--trainable simo --lr 1e-3 --seve-gate-lr 0.1 --weight-ensemble 1" ;;
    seve-distill-w*) echo "--trainable simo --lr 1e-3 --feature-distill ${1#seve-distill-w} --weight-ensemble 1" ;;
    simo-only-wise|simo-wise) echo "--trainable ${1%-wise} --lr 1e-3 --weight-ensemble 0.5" ;;
    *) echo "unknown study method $1" >&2; return 2 ;;
  esac
}
adapt_run() {  # METHOD SEED: train with snapshots, then evaluate every snapshot; finished parts are skipped
  local method=$1 seed=$2 out="$RUNS/$1-s$2.safetensors" flags step missing=0
  for step in $SNAPSHOTS "$ADAPT_STEPS"; do [ -f "$RUNS/$method-s$seed.step$step.eval.json" ] || missing=1; done
  [ "$missing" = 1 ] || return 0  # every evaluation is there (kept from an earlier run of the same study)
  flags=$(adapt_flags "$method")
  # shellcheck disable=SC2086  # flags and SNAPSHOTS are word lists
  [ -f "$out" ] || fisa-rt train adapt $flags --data "$DATA" --init "$RUNS/generator.safetensors" --out "$out" \
    --steps "$ADAPT_STEPS" --batch-size 16 --seed "$seed" --snapshots $SNAPSHOTS --no-progress \
    > "$RUNS/$method-s$seed.log"
  for step in $SNAPSHOTS "$ADAPT_STEPS"; do
    weights="$out"; [ "$step" = "$ADAPT_STEPS" ] || weights="$RUNS/$method-s$seed.step$step.safetensors"
    result="$RUNS/$method-s$seed.step$step.eval.json"
    [ -f "$result" ] || fisa-rt eval --engine "$weights" --data "$DATA" --split val --object-threshold "$THRESHOLD" \
      --json "$result" > /dev/null
  done
  tail -n 1 "$RUNS/$method-s$seed.log"
}
export -f adapt_flags adapt_run
export RUNS DATA ADAPT_STEPS SNAPSHOTS THRESHOLD
# JOBS > 1: that many runs side by side, one thread each. On a machine shared with other work a one-thread run does
# not stall at torch's per-op thread barriers when a core is taken; alone, two threads per run did as well
# (docs/training.md, "Time budget").
[ "$JOBS" = 1 ] || export OMP_NUM_THREADS=1
runs() { xargs -P "$JOBS" -L 1 bash -c 'adapt_run "$@"' _; }
# the weight candidates first (side by side), so the chosen weight then runs beside the other methods
for weight in $DISTILL_WEIGHTS; do echo "seve-distill-w$weight $SELECT_SEED"; done | runs
# shellcheck disable=SC2086
chosen=$(python "$STUDY/pick-distill-weight.py" "$RUNS" --weights $DISTILL_WEIGHTS --seed "$SELECT_SEED" \
  --step "$ADAPT_STEPS")
for seed in $SEEDS; do for method in $METHODS "seve-distill-w$chosen"; do echo "$method $seed"; done; done | runs
# 5. cost per step (interleaved, CPU time and memory) on the study's own generator checkpoint
[ -f "$RUNS/step-cost.json" ] || python "$STUDY/step-cost.py" --data "$DATA" \
  --init "$RUNS/generator.safetensors" --steps "$COST_STEPS" --rounds "$COST_ROUNDS" --threads 1 \
  --json "$RUNS/step-cost.json" | tee "$RUNS/step-cost.md"
# 6. the tables docs/training.md quotes
python "$STUDY/study-table.py" "$RUNS" --steps $SNAPSHOTS "$ADAPT_STEPS" --seeds $SEEDS | tee "$RUNS/tables.md"
