#!/usr/bin/env bash
# Regenerate the shipped model in models/ from ../shared/data/cxr with a fixed seed.
#
#   bash benchmarks/ship_model.sh            # train (about 60 min on 2 cores), export, evaluate, copy
#   RUN=runs/long bash benchmarks/ship_model.sh   # reuse a finished run
#
# The recipe is benchmarks/recipes/shipped_long.json; benchmarks/SHIPPED_MODEL.md records the runs
# that led to it. The test split is scored once, after the choice was made on the validation split.
# The shipped run B used the Keras-layer augmentation (the recipe says "augmentation": "keras_layers");
# its layers draw from stateful random generators, so a retrain gives a model of the same recipe, not
# the same bytes. SHIPPED_MODEL.md shows how far seeds of one recipe differ (adult checks by up to 25
# points on 37 images).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/long}
RECIPE=${RECIPE:-benchmarks/recipes/shipped_long.json}
DATA=../shared/data/cxr
EXTRA=../shared/data/cxr_adult_pneumonia

if [ ! -f "$RUN/metrics.json" ]; then
  edgecxr train --config "$RECIPE" --out "$RUN"
fi
# float32 twin, and the int8 model after 2 epochs of quantization-aware training. It misses the
# default 1-point guard by one image (see SHIPPED_MODEL.md), hence --max-drop.
edgecxr export "$RUN" --quantize none --force
edgecxr export "$RUN" --quantize int8 --io uint8 --qat 2 --max-drop 6 --force ${INT8_FLAGS:-}

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
