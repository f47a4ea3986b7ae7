"""benchmarks/sparse_speed.py's graph rewrites keep the network's answers (they exist only to make
XNNPACK's sparse path eligible; a rewrite that changed the outputs would make its timings meaningless)."""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sparse_speed  # noqa: E402


def _run(flat: bytes, x: np.ndarray) -> tuple[np.ndarray, Counter]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flat)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]), Counter(o["op_name"] for o in it._get_ops_details())


def test_explicit_same_padding_adds_pads_and_keeps_outputs():
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inp)
    x = keras.layers.DepthwiseConv2D(5, padding="same")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # stride 2: left alone
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    x = np.random.default_rng(0).normal(size=(1, 12, 12, 3)).astype(np.float32)
    before, ops_before = _run(flat, x)
    after, ops_after = _run(sparse_speed.explicit_same_padding(flat), x)
    assert ops_after["PAD"] == ops_before["PAD"] + 2
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_prune_zeroes_the_asked_share_and_restores():
    import tf_keras as keras

    layer = keras.layers.Conv2D(8, 1)
    layer.build((None, 4, 4, 16))
    original = [layer.get_weights()]
    assert sparse_speed.prune([layer], original, 0.75) == pytest.approx(0.75, abs=0.01)
    kept = np.abs(layer.get_weights()[0][layer.get_weights()[0] != 0])
    assert kept.min() >= np.quantile(np.abs(original[0][0]), 0.74)  # the largest weights survive
    assert sparse_speed.prune([layer], original, 0.0) == 0.0
    np.testing.assert_array_equal(layer.get_weights()[0], original[0][0])
