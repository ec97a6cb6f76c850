#!/usr/bin/env bash
# Set up (if needed) and run raydetect's main job on the embedded default model, efficientnet_lite0.
# Data: $RAYDETECT_DATA, else the shared ImageNet sample beside the checkout, else sklearn's digits
# (with digits_cnn, since efficientnet_lite0 needs ImageNet-like photos).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
DATA=${RAYDETECT_DATA:-../shared/data/imagenet-sample}
OUT=${RAYDETECT_OUT:-runs/demo}
LIMIT=${RAYDETECT_LIMIT:-64}
if [ -d "$DATA" ]; then
  MODEL=efficientnet_lite0
else
  echo "demo: no ImageNet folder at $DATA (set RAYDETECT_DATA); using sklearn's digits with digits_cnn"
  DATA=digits MODEL=digits_cnn LIMIT=${RAYDETECT_LIMIT:-300}
fi
raydetect reproduce --model "$MODEL" --data "$DATA" --limit "$LIMIT" --out "$OUT"
