#!/usr/bin/env bash
# Trains the embedded default model (fisa-tiny on the synthetic set) and its two baselines, from
# nothing, with the project's own commands. CPU: about an hour on 2 cores. Output under $RUNS (runs/).
#
#   RUNS=runs scripts/train-default-model.sh      # from any folder; the data is made once, if missing
# -h/--help prints this header.
set -euo pipefail
case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;  # the header is the help
  "") ;;
  *) echo "$0 takes no arguments: settings are environment variables (see --help)" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-runs}
mkdir -p "$RUNS"
[ -f "$RUNS/data/annotations/panoptic_val.json" ] || fisa-rt make-data --out "$RUNS/data" --train 3000 --val 300 \
  --seed 0
# 1. tiny CLIP, contrastive on scene captions and (half of the pairs) single-segment crops with their class prompt
fisa-rt train clip --data "$RUNS/data" --out "$RUNS/clip.safetensors" --steps 1000 --batch-size 32 --lr 1e-3 \
  --warmup 100 --weight-decay 0.1 --region-captions 0.5
python "$ROOT/benchmarks/study/clip-crop-accuracy.py" "$RUNS/clip.safetensors" "$RUNS/data" \
  | tee "$RUNS/clip-crop-accuracy.txt"
# 2. mask generator on the frozen CLIP
fisa-rt train generator --data "$RUNS/data" --init "$RUNS/clip.safetensors" --out "$RUNS/generator.safetensors" \
  --steps 1000 --batch-size 16 --lr 5e-4 --warmup 100
# 3. FISA (SEVE + SIMO: the embedded model), train adapt's default preset (SIMO alone, weight ensemble 0.5) and the
#    two baselines, same recipe and budget. The default preset is not what ships: on this world's held-out classes
#    (novel compositions of seen words) FISA scores higher (docs/training.md, "Which preset is the default")
fisa-rt train adapt --trainable simo --weight-ensemble 1 --data "$RUNS/data" \
  --init "$RUNS/generator.safetensors" --out "$RUNS/fisa.safetensors" --steps 600 --batch-size 16 --lr 1e-3
fisa-rt train adapt --data "$RUNS/data" \
  --init "$RUNS/generator.safetensors" --out "$RUNS/default-preset.safetensors" --steps 600 --batch-size 16 --lr 1e-3
fisa-rt train adapt --trainable frozen --data "$RUNS/data" \
  --init "$RUNS/generator.safetensors" --out "$RUNS/frozen-clip.safetensors" --steps 600 --batch-size 16 --lr 1e-3
fisa-rt train adapt --trainable full --weight-ensemble 1 --data "$RUNS/data" \
  --init "$RUNS/generator.safetensors" --out "$RUNS/full-finetune.safetensors" --steps 600 --batch-size 16 --lr 2e-4
# 4. calibrate the panoptic object threshold on training images (seen classes; val stays untouched)
for t in 0.1 0.2 0.3 0.4 0.8; do
  fisa-rt eval --engine "$RUNS/fisa.safetensors" --data "$RUNS/data" --split train --limit 300 \
    --object-threshold "$t" --json "$RUNS/calibrate-$t.json" --overwrite > /dev/null
done
THRESHOLD=$(python3 -c "import json,sys; r={t: json.load(open(f'$RUNS/calibrate-{t}.json'))['all']['pq'] \
for t in sys.argv[1:]}; print(max(r, key=r.get))" 0.1 0.2 0.3 0.4 0.8)
echo "object threshold: $THRESHOLD"
# 5. ship FISA in fp16, with the calibrated threshold, as the embedded default
python3 - "$RUNS/fisa.safetensors" "$THRESHOLD" "$ROOT/fisa_rt/assets/fisa-tiny-synthetic.safetensors" <<'PY'
import dataclasses
import sys
import torch
from fisa_rt.checkpoint import load_model, save_checkpoint
model, info = load_model(sys.argv[1])
model.cfg.postprocess = dataclasses.replace(model.cfg.postprocess, object_mask_threshold=float(sys.argv[2]))
save_checkpoint(sys.argv[3], model, info.vocabulary, info.is_thing,
                dtype=torch.float16, extra=info.extra, overwrite=True)
PY
