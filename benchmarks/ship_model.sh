#!/usr/bin/env bash
# Regenerate the shipped model in models/ from ../shared/data/cxr with fixed seeds.
#
#   bash benchmarks/ship_model.sh                 # train, export, score: about 45 min on 2 cores
#   RUN=runs/cue45 bash benchmarks/ship_model.sh  # a run that already has metrics.json is reused
#
# The shipped model is one MobileNetV3Small (minimalistic) trained with the source-cue augmentations
# (benchmarks/recipes/cue_seed45.json: aspect stretch, tone curve, blacked-out borders, on top of the
# common recipe), chosen on validation among cue-removal runs with seeds 43, 44 and 45
# (SHIPPED_MODEL.md). Over four seeds the recipe kept 88% of NIH adult normals and of adult
# pneumonias from COVID-19 on validation (worst seed 81% / 78%); this seed was the best of four, so a
# retrain will likely land a little lower on those checks, not on these numbers:
# the affine augmentation draws are stateless and seeded, but TensorFlow's CPU kernels are not
# guaranteed bit-reproducible, so expect a model of the same recipe, not the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/cue45}
DATA=../shared/data/cxr
EXTRA=../shared/data/cxr_adult_pneumonia

if [ ! -f "$RUN/metrics.json" ]; then
  edgecxr train --config benchmarks/recipes/cue_seed45.json --out "$RUN" --force
fi

# float32 twin, and the int8 model after 5 epochs of quantization-aware training (towards the float
# model's own probabilities). --max-drop: see the guard's numbers in SHIPPED_MODEL.md.
edgecxr export "$RUN" --quantize none --force
edgecxr export "$RUN" --quantize int8 --io uint8 --qat 5 --max-drop 6 --force ${INT8_FLAGS:-}

for model in edgecxr_float32 edgecxr_int8_uint8io; do
  edgecxr evaluate "$RUN/export/$model.tflite" --data "$DATA" --extra-data "$EXTRA" \
    --splits "$RUN/splits.csv" --split test --out "$RUN/export/test-$model" --threads 1
done

mkdir -p models
cp "$RUN/export/edgecxr_int8_uint8io.tflite" models/edgecxr_int8.tflite
cp "$RUN/export/edgecxr_int8_uint8io.json" models/edgecxr_int8.json
cp "$RUN/export/edgecxr_float32.tflite" models/edgecxr_float32.tflite
cp "$RUN/export/edgecxr_float32.json" models/edgecxr_float32.json
echo "copied to models/; update models/MODEL_CARD.md from $RUN/export/MODEL_CARD.md and $RUN/export/test-*/report.md"
