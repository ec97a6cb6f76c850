#!/usr/bin/env bash
# The reference detectors beside raydetect's default design on digits_cnn, attackers who know each detector
# included (squeeze_eot and the white-box adaptive attack, 100 steps): every detector trained on the same attack
# rows of digits 0-239, evaluated on digits 240-263 (the adaptive attack on four detectors is slow on 2 cores). Resumable; about 40 min on 2 cores. Then:
#   python bench/peers.py record-digits && python scripts/tables.py
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT=${RAYDETECT_OUT:-runs/peers-digits}
M=(--model digits_cnn)
set -x
raydetect attack digits "${M[@]}" --eps 0.3 --limit 240 --out "$OUT/attacks"
raydetect features "$OUT/attacks" "${M[@]}" --out "$OUT/ig/features"
raydetect train "$OUT/ig/features" --detector lr --out "$OUT/ig/train"
for p in squeeze lid mahalanobis; do
  raydetect features "$OUT/attacks" "${M[@]}" --peer $p --no-explanation --squeezer bits:1 --squeezer median:2 \
    --out "$OUT/$p/features"
  raydetect train "$OUT/$p/features" --detector lr --out "$OUT/$p/train"
done
raydetect evaluate digits --detector "$OUT/ig/train/detector" --compare "$OUT/squeeze/train/detector" \
  --compare "$OUT/lid/train/detector" --compare "$OUT/mahalanobis/train/detector" --eps 0.3 --offset 240 --limit 24 \
  --out "$OUT/compare"
