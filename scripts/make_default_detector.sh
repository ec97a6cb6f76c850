#!/usr/bin/env bash
# Make the detector that ships in the package (raydetect/resources/detector) from the shared ImageNet
# sample: train on its first 300 files (sorted by path), measure on 64 of the 200 held back, copy the
# bundle with that measurement and these commands into its manifest. About 45 min on 2 cores.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
DATA=${RAYDETECT_DATA:-../shared/data/imagenet-sample}
OUT=${RAYDETECT_OUT:-runs/default-detector} EVAL=${RAYDETECT_EVAL_OUT:-runs/default-eval}
TRAIN=300 HELD=64
TRAIN_CMD="raydetect reproduce --protocol corrected --detector lr --data $DATA --limit $TRAIN --out $OUT"
EVAL_CMD="raydetect evaluate $DATA --detector $OUT/corrected/detector --eps 4/255 --no-adaptive --offset $TRAIN --limit $HELD --out $EVAL"
set -x
$TRAIN_CMD
$EVAL_CMD
python scripts/ship_detector.py "$OUT/corrected/detector" "$EVAL" raydetect/resources/detector \
  --command "$TRAIN_CMD && $EVAL_CMD" --held-back "sample files [$TRAIN, $((TRAIN + HELD))) of $DATA, sorted by path"
