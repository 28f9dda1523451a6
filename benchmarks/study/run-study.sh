#!/usr/bin/env bash
# Issue 15's study: FISA against a frozen-CLIP classifier and full fine-tuning on the broad synthetic world,
# where CLIP's pre-training knows concepts segmentation training never shows, so there is something to lose.
# Every step is a project command; a finished step is skipped when the script is run again.
#
#   nice -n 19 benchmarks/study/run-study.sh        # the study (RUNS=runs/study)
#   RUNS=runs/smoke PRETRAIN=64 TRAIN=64 VAL=24 CLIP_STEPS=4 GEN_STEPS=4 ADAPT_STEPS=6 SNAPSHOTS="2 4" \
#     SEEDS=0 COST_STEPS=1 COST_ROUNDS=1 benchmarks/study/run-study.sh   # a smoke run: proves the pipeline only
#
# Lengths: about 115 minutes of one thread's CPU time, measured step by step (docs/training.md, "The study"),
# before simo-only was added (its 600 steps: about 6 minutes per seed, 590-599 ms/step on one thread).
# Settings are environment variables (defaults below): RUNS, PRETRAIN, TRAIN, VAL, CLIP_STEPS, GEN_STEPS,
# ADAPT_STEPS, SNAPSHOTS, SEEDS, THRESHOLD, COST_STEPS, COST_ROUNDS. -h/--help prints this header.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the header above is the help
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
RUNS=${RUNS:-runs/study}
PRETRAIN=${PRETRAIN:-3000}; TRAIN=${TRAIN:-3000}; VAL=${VAL:-300}
CLIP_STEPS=${CLIP_STEPS:-1000}; GEN_STEPS=${GEN_STEPS:-1000}
ADAPT_STEPS=${ADAPT_STEPS:-600}; SNAPSHOTS=${SNAPSHOTS:-"100 300"}
SEEDS=${SEEDS:-"0 1"}
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
python benchmarks/study/clip-crop-accuracy.py "$RUNS/clip.safetensors" "$DATA" | tee "$RUNS/clip-crop-accuracy.txt"
# 3. stage 2: the mask generator, on seen classes only; its masks on each group
[ -f "$RUNS/generator.safetensors" ] || fisa-rt train generator --data "$DATA" --init "$RUNS/clip.safetensors" \
  --out "$RUNS/generator.safetensors" --steps "$GEN_STEPS" --batch-size 16 --lr 5e-4 --warmup 100 --no-progress \
  | tee "$RUNS/generator.log"
python benchmarks/study/mask-quality.py "$RUNS/generator.safetensors" "$DATA" --json "$RUNS/mask-quality.json"
# 4. stage 3, four ways, each seed; snapshots give the accuracy-against-length curve of one schedule
for seed in $SEEDS; do
  for method in frozen simo full simo-only; do  # simo-only: FISA without SEVE, added after the ablation
    out="$RUNS/$method-s$seed.safetensors"
    lr=1e-3; [ "$method" = full ] && lr=2e-4
    # shellcheck disable=SC2086  # SNAPSHOTS is a list of step counts
    [ -f "$out" ] || fisa-rt train adapt --trainable "$method" --data "$DATA" --init "$RUNS/generator.safetensors" \
      --out "$out" --steps "$ADAPT_STEPS" --batch-size 16 --lr "$lr" --seed "$seed" --snapshots $SNAPSHOTS \
      --no-progress | tee "$RUNS/$method-s$seed.log"
    for step in $SNAPSHOTS "$ADAPT_STEPS"; do
      weights="$out"; [ "$step" = "$ADAPT_STEPS" ] || weights="$RUNS/$method-s$seed.step$step.safetensors"
      result="$RUNS/$method-s$seed.step$step.eval.json"
      [ -f "$result" ] || fisa-rt eval --engine "$weights" --data "$DATA" --split val --object-threshold "$THRESHOLD" \
        --json "$result" > /dev/null
    done
  done
done
# 5. cost per step (interleaved, CPU time and memory) on the study's own generator checkpoint
[ -f "$RUNS/step-cost.json" ] || python benchmarks/study/step-cost.py --data "$DATA" \
  --init "$RUNS/generator.safetensors" --steps "$COST_STEPS" --rounds "$COST_ROUNDS" --threads 1 \
  --json "$RUNS/step-cost.json" | tee "$RUNS/step-cost.md"
# 6. the tables docs/training.md quotes
python benchmarks/study/study-table.py "$RUNS" --steps $SNAPSHOTS "$ADAPT_STEPS" --seeds $SEEDS | tee "$RUNS/tables.md"
