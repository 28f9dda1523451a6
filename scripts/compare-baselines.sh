#!/usr/bin/env bash
# Evaluates FISA and its two baselines (from scripts/train-default-model.sh) on the synthetic
# validation split and prints the markdown table that docs/training.md quotes.
set -euo pipefail
RUNS=${RUNS:-runs}
for name in frozen-clip full-finetune fisa; do
  fisa-rt eval --engine "$RUNS/$name.safetensors" --data "$RUNS/data" --split val --json "$RUNS/$name.eval.json" --overwrite
done
python3 - "$RUNS" <<'PY'
import json, sys
runs = sys.argv[1]
rows = [("frozen-clip", "(a) frozen CLIP classifier (void + temperature trained)"), ("full-finetune", "(b) full fine-tuning of CLIP"), ("fisa", "FISA: SEVE + SIMO")]
print("| model | PQ all | PQ seen | PQ held-out | mIoU seen | mIoU held-out | PQ things | PQ stuff |")
print("|---|---|---|---|---|---|---|---|")
for name, label in rows:
    r = json.load(open(f"{runs}/{name}.eval.json"))
    print(f"| {label} | {r['all']['pq']:.1f} | {r['seen']['pq']:.1f} | {r['held_out']['pq']:.1f} | "
          f"{r['seen']['miou']:.1f} | {r['held_out']['miou']:.1f} | {r['things']['pq']:.1f} | {r['stuff']['pq']:.1f} |")
PY
