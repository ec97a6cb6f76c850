#!/usr/bin/env bash
# Set up (if needed), then reproduce the paper end to end through Ray on the embedded default model:
#   1. reproduce the paper on a small real dataset (attack, explain, train; paper protocol beside the
#      corrected one), which also yields a detector bundle;
#   2. attack images the detector never saw and export them, clean and adversarial, into one folder;
#   3. audit that folder with the bundle and print the report's path.
# Data: $RAYDETECT_DATA, else the shared ImageNet sample beside the checkout, else sklearn's digits
# (with digits_cnn, since efficientnet_lite0 needs ImageNet photos).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
DATA=${RAYDETECT_DATA:-../shared/data/imagenet-sample}
OUT=${RAYDETECT_OUT:-runs/demo}
EXTRA=()
if [ -d "$DATA" ]; then
  MODEL=efficientnet_lite0 TRAIN=${RAYDETECT_LIMIT:-96} AUDIT=24
else
  echo "demo: no ImageNet folder at $DATA (set RAYDETECT_DATA); using sklearn's digits with digits_cnn"
  DATA=digits MODEL=digits_cnn TRAIN=${RAYDETECT_LIMIT:-240} AUDIT=60
  EXTRA=(--eps 0.3)
fi
set -x
raydetect reproduce --model "$MODEL" --data "$DATA" --limit "$TRAIN" --out "$OUT" "${EXTRA[@]}"
# The audit set: BIM-10 in three modes, what most attack tools make by default (not the training mix).
raydetect attack "$DATA" --model "$MODEL" --offset "$TRAIN" --limit "$AUDIT" --strengths bim --out "$OUT/audit-set/attacks" "${EXTRA[@]}"
raydetect export "$OUT/audit-set/attacks" --out "$OUT/audit-set/images"
raydetect audit "$OUT/audit-set/images" --detector "$OUT/corrected/detector" --out "$OUT/audit"
