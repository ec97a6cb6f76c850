#!/usr/bin/env bash
# Set up (if needed), then run raydetect's main job, the audit, through Ray with the shipped detector:
#   1. make a small folder of clean and adversarial images from sample images the shipped detector
#      never saw: BIM-10 (what most attack tools make; caught) and DeepFool (a minimal attack that
#      stops once the label flips; partly missed), saved as 8-bit PNG;
#   2. audit that folder with the shipped detector (no --detector) and print the report's path.
# Data: $RAYDETECT_DATA, else the shared ImageNet sample beside the checkout (its files from 364 on,
# sorted by path, are held back from the shipped detector's training and measurement).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
DATA=${RAYDETECT_DATA:-../shared/data/imagenet-sample}
OUT=${RAYDETECT_OUT:-runs/demo}
OFFSET=${RAYDETECT_OFFSET:-364} N=${RAYDETECT_LIMIT:-24}
if [ ! -d "$DATA" ]; then
  echo "demo: no ImageNet-style folder at $DATA; set RAYDETECT_DATA to one (<wnid>/<file> images)" >&2
  exit 2
fi
set -x
raydetect attack "$DATA" --offset "$OFFSET" --limit "$N" --mode untargeted --strengths bim --out "$OUT/attacks/bim"
raydetect attack "$DATA" --offset "$OFFSET" --limit "$N" --mode untargeted --method deepfool --out "$OUT/attacks/minimal"
raydetect export "$OUT/attacks/bim" --out "$OUT/images/bim"
raydetect export "$OUT/attacks/minimal" --kind adversarial --out "$OUT/images/minimal"
raydetect audit "$OUT/images" --out "$OUT/audit"
