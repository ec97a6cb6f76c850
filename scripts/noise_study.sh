#!/usr/bin/env bash
# Issue 33 on ImageNet: the noise-stability peer (Hu et al. 2019; Roth et al. 2019), alone and joined to the
# default's explanation descriptor, beside the shipped default. All trained on the attack rows of files [0,300) the
# default was trained on; chosen on selection files [300,350), confirmed on [400,450) (the files the IG+squeeze
# combination was confirmed on). The rule, fixed before any row was read: ig+noise becomes the default only if its
# mean TPR at 5% FPR over the selection half's attacks that are not held out (BIM, PGD, early-stopped BIM, DeepFool)
# beats the default's; the held-out families (CW-L2, Square, the JPEG-saved attacks, transfer) choose nothing.
# Resumable (every job resumes from its output); about 1.5 h on 2 cores. Then: python bench/peers.py record-noise
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
DATA=${RAYDETECT_DATA:-../shared/data/imagenet-sample}
OUT=${RAYDETECT_OUT:-runs/peers}
set -x
raydetect attack "$DATA" --eps 0.1 --eps 4/255 --limit 300 --out "$OUT/attacks"
raydetect features "$OUT/attacks" --peer noise --no-explanation --out "$OUT/noise/features"
raydetect train "$OUT/noise/features" --detector lr --out "$OUT/noise/train"
raydetect features "$OUT/attacks" --peer noise --out "$OUT/ig-noise/features"
raydetect train "$OUT/ig-noise/features" --detector lr --out "$OUT/ig-noise/train"
for half in select:300 confirm:400; do
  raydetect evaluate "$DATA" --detector "$OUT/ig-noise/train/detector" --compare raydetect/resources/detector \
    --compare "$OUT/noise/train/detector" --eps 4/255 --no-adaptive --offset "${half#*:}" --limit 50 \
    --out "$OUT/ig-noise/${half%%:*}"
done
