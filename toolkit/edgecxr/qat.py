"""Quantization-aware fine-tuning (``--qat N``): the second remedy when int8 loses accuracy.

Whole-model where tfmot can wrap every layer (the minimalistic MobileNetV3: ReLU only), head-only
otherwise: tfmot cannot wrap the standard model's hard-swish ``TFOpLambda`` layers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter

import numpy as np

from .converter import require_tf
from .errors import DataError, require
from .guard import GuardData, keras_probabilities
from .tables import counts

# QAT fine-tunes at this fraction of the run's learning rate: it should nudge weights towards
# int8-friendly values, not retrain the model.
QAT_LR_FACTOR = 0.01
# Up to this many QAT steps in all, train eagerly: tracing the fake-quantized step costs more.
EAGER_QAT_STEPS = 30
_OUTPUT_ONLY_CONFIG = None


def quantization_aware(model, cfg, guard_data: GuardData, epochs: int, notes: dict, log):
    """Fine-tune a fake-quantized copy of the model on the training split; return it for conversion.

    ``model`` is the flat graph from :func:`edgecxr.converter.fold_head_batchnorm` (tfmot needs it
    flat, without the head's BatchNorm). Whole-model QAT if tfmot supports every layer, else head-only QAT with
    the backbone frozen (nothing in it is fake-quantized, so training it would not help).

    The targets are the float model's own probabilities (distillation), not the labels: the point
    is an int8 model that behaves like the validated float model, which is what the guard checks,
    not a retrained one (label targets pulled the shipped run's int8 copy away from it, e.g.
    COVID-19 sensitivity 94 -> 87 % after 3 epochs). Partial labels need no special case either.
    """
    tfmot = require("tensorflow_model_optimization", "train")
    keras = require("tf_keras", "train")
    flat = model
    unsupported = _unsupported_layers(flat, tfmot, keras)
    if unsupported:
        reason = f"tfmot cannot quantize {counts(unsupported)}"
        (qat, frozen), scope = _quantize_head(flat, tfmot, keras), "head-only"
    else:
        qat, scope, reason, frozen = _quantize_whole(flat, tfmot, keras), "whole-model", "", []
    frozen += _hold_still(qat, keras)
    train, kept = guard_data.load(guard_data.train_records(), log)
    if not kept:
        raise DataError("the training split has no readable images for --qat")
    targets = keras_probabilities(flat, train)  # the float model's answers, before any fine-tuning
    weights = _balancing_weights([r.label for r in kept])
    lr = cfg.learning_rate * QAT_LR_FACTOR
    steps = math.ceil(len(kept) / cfg.batch_size)
    # Tracing a fake-quantized train step costs tens of seconds; a handful of steps run faster eagerly.
    eager = steps * epochs <= EAGER_QAT_STEPS
    log(f"quantization-aware training ({scope}{': ' + reason if reason else ''}): {epochs} epoch(s) on "
        f"{len(kept)} training images, learning rate {lr:g}, targets = the float model's probabilities")
    t0 = time.time()
    with _frozen(frozen):  # frozen backbone: no fake-quant there to adapt to; BatchNorm in inference mode
        qat.compile(keras.optimizers.Adam(lr), keras.losses.CategoricalCrossentropy(), metrics=["accuracy"],
                    run_eagerly=eager)
        history = qat.fit(_batches(train, targets, weights, cfg.batch_size, cfg.seed), steps_per_epoch=steps,
                          epochs=epochs, verbose=0)
    loss = history.history.get("loss", [None])[-1]
    notes["qat"] = {"epochs": epochs, "scope": scope, "why": reason or "tfmot supports every layer",
                    "targets": "float model's probabilities (distillation)",
                    "learning_rate": lr, "train_images": len(kept), "final_loss": loss,
                    "seconds": round(time.time() - t0, 1)}
    return qat


def _hold_still(qat, keras) -> list:
    """Switch off what makes fine-tuning drift from the float model: Dropout (rate 0) and
    BatchNorm statistics (frozen layers run in inference mode, keeping the float model's moving
    averages). Returns the BatchNorm layers for :func:`_frozen`; only weights adapt to int8."""
    batchnorms = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", layer)  # tfmot's QuantizeWrapperV2 holds the real layer
        if isinstance(inner, keras.layers.Dropout):
            inner.rate = 0.0
        elif isinstance(inner, keras.layers.BatchNormalization) and inner.trainable:
            batchnorms.append(inner)
    return batchnorms


@contextlib.contextmanager
def _frozen(layers):
    """Set ``trainable = False`` on layers for the duration of the block."""
    for layer in layers:
        layer.trainable = False
    try:
        yield
    finally:
        for layer in layers:
            layer.trainable = True


def _batches(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch: int, seed: int):
    """Shuffled float32 batches made on the fly: the uint8 split stays the only full copy in memory."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for i in range(0, len(order), batch):
            idx = np.sort(order[i:i + batch])
            yield images[idx].astype(np.float32), targets[idx], weights[idx]


def _balancing_weights(labels: list[str]) -> np.ndarray:
    """Per-image weights so every label weighs the same in total, like training's oversampling."""
    counts = Counter(labels)
    w = np.array([len(labels) / (len(counts) * counts[lab]) for lab in labels], np.float32)
    return w


def _unsupported_layers(flat, tfmot, keras) -> Counter:
    """Layer types tfmot's default 8-bit scheme cannot wrap (standard MobileNetV3: the TFOpLambda
    and Multiply layers of hard-swish and squeeze-excite). BatchNormalization is folded into the
    convolution before it, and Rescaling gets an output-only config, so neither counts."""
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    handled = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.BatchNormalization)
    return Counter(type(layer).__name__ for layer in flat.layers
                   if not isinstance(layer, handled) and not registry.supports(layer))


def _output_only_config(tfmot):
    """A QuantizeConfig that fake-quantizes only a layer's output (for weightless Rescaling).

    Made once per process, with its methods kept out of AutoGraph: they hold no tensor logic, and
    AutoGraph would re-read their source from the file on disk when training is traced.
    """
    global _OUTPUT_ONLY_CONFIG
    if _OUTPUT_ONLY_CONFIG is not None:
        return _OUTPUT_ONLY_CONFIG
    tf = require_tf()
    plain = tf.autograph.experimental.do_not_convert

    class OutputOnlyQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        @plain
        def get_weights_and_quantizers(self, layer):
            return []

        @plain
        def get_activations_and_quantizers(self, layer):
            return []

        @plain
        def set_quantize_weights(self, layer, quantize_weights):
            pass

        @plain
        def set_quantize_activations(self, layer, quantize_activations):
            pass

        @plain
        def get_output_quantizers(self, layer):
            return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    _OUTPUT_ONLY_CONFIG = OutputOnlyQuantizeConfig
    return OutputOnlyQuantizeConfig


def _quantize_whole(flat, tfmot, keras):
    """Fake-quantize every layer; raises (RuntimeError) when tfmot meets a layer it cannot wrap."""
    config_cls = _output_only_config(tfmot)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotate_layer(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if isinstance(layer, keras.layers.Rescaling):
            return annotate(layer, quantize_config=config_cls())
        return annotate(layer)

    annotated = keras.models.clone_model(flat, clone_function=annotate_layer)
    annotated.set_weights(flat.get_weights())
    with tfmot.quantization.keras.quantize_scope({"OutputOnlyQuantizeConfig": config_cls}):
        return tfmot.quantization.keras.quantize_apply(annotated)


def _quantize_head(flat, tfmot, keras):
    """Fake-quantize only the head's Dense layers; freeze everything else."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    first_head = max(i for i, layer in enumerate(flat.layers) if not isinstance(
        layer, (keras.layers.Dense, keras.layers.Dropout, keras.layers.BatchNormalization))) + 1
    head = {layer.name for layer in flat.layers[first_head:] if isinstance(layer, keras.layers.Dense)}

    def annotate_layer(layer):
        # The other layers are shared with the run's model (copies of MobileNetV3's TFOpLambda
        # layers break tfmot's own re-cloning), so they are frozen only while QAT trains.
        return annotate(layer) if layer.name in head else layer

    annotated = keras.models.clone_model(flat, clone_function=annotate_layer)
    qat = tfmot.quantization.keras.quantize_apply(annotated)
    frozen = [layer for layer in qat.layers if layer.trainable and layer.weights
              and not isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)
              and not layer.name.startswith("quantize")]
    return qat, frozen
