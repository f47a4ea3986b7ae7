#!/usr/bin/env bash
# Regenerate the shipped model in models/ from ../shared/data with fixed seeds.
#
#   bash benchmarks/ship_model.sh                         # train, export, score: about 20 min on 2 cores
#   RUN=runs/NAME bash benchmarks/ship_model.sh           # a run that already has metrics.json is reused
#   WEIGHTS=/path/to/no_top.h5 bash benchmarks/ship_model.sh   # the ImageNet weights elsewhere
#
# The shipped model is a standard MobileNetV3Small at 160 px, fine-tuned from ImageNet in two stages
# (2 epochs head only, then every layer at 0.3x the rate: benchmarks/recipes/tl_twostage160_seed46.json, seed 46)
# on cxr + adult pneumonia + adult tuberculosis + Hannover COVID-19, with the source-cue
# augmentations, the checkpoint chosen by the worst validation source. The recipe was chosen on
# validation against training from scratch and the frozen feature extractor, and seed 46 over
# seed 45 by the worst validation source, 77.0% vs 76.1% (benchmarks/TRANSFER.md). It ships
# as float16 (the same answers as float32 at half the size); full-integer int8 of this network
# collapses to 47-53% validation accuracy (TRANSFER.md), so there is no int8 file.
#
# The split is the committed benchmarks/splits/transfer_split.csv, so the test split below is the
# one TRANSFER.md reports and `edgecxr bench --data ... --splits ... --split test` can score.
# TensorFlow's CPU kernels are not guaranteed bit-reproducible: expect a model of the same recipe,
# not the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/tl_twostage160_seed46}
WEIGHTS=${WEIGHTS:-../shared/weights/mobilenet_v3_small_1.0_imagenet_no_top_from_slim_uint8.h5}
SPLITS=benchmarks/splits/transfer_split.csv
DATA=../shared/data/cxr
EXTRA=(--extra-data ../shared/data/cxr_adult_pneumonia --extra-data ../shared/data/cxr_adult_tb
       --extra-data ../shared/data/cxr_hannover)

if [ ! -f "$RUN/metrics.json" ]; then
  edgecxr train --config benchmarks/recipes/tl_twostage160_seed46.json --out "$RUN" --weights "$WEIGHTS" --force
fi

# float32 twin and the float16 file, both through the default accuracy guard on validation. The old
# files are removed instead of passing --force, which would also export a model export calls useless.
rm -f "$RUN"/export/edgecxr_float32.* "$RUN"/export/edgecxr_float16.*
edgecxr export "$RUN" --quantize none
edgecxr export "$RUN" --quantize float16

for model in edgecxr_float32 edgecxr_float16; do
  edgecxr evaluate "$RUN/export/$model.tflite" --data "$DATA" "${EXTRA[@]}" \
    --splits "$SPLITS" --split test --out "$RUN/export/test-$model" --threads 1 --force
done

mkdir -p models
for model in edgecxr_float16 edgecxr_float32; do
  cp "$RUN/export/$model.tflite" "models/$model.tflite"
  cp "$RUN/export/$model.json" "models/$model.json"
done
echo "copied to models/; update models/MODEL_CARD.md from $RUN/export/edgecxr_float16.md and $RUN/export/test-*/report.md"
