"""Model construction: shapes, trainable flags per weights mode, offline and bad-weights errors."""

import numpy as np
import pytest

keras = pytest.importorskip("tf_keras")

from edgecxr.config import TrainConfig
from edgecxr.errors import WeightsError
from edgecxr.model import build_backbone, build_model, model_spec


def small_cfg(**kw):
    base = dict(image_size=64, head_width=8, weights="none")
    base.update(kw)
    return TrainConfig(**base)


def backbone_of(model):
    return next(layer for layer in model.layers if layer.name.lower().startswith("mobilenetv3"))


def test_scratch_model_trains_everything_and_outputs_probabilities():
    model = build_model(small_cfg())
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, 4)
    assert backbone_of(model).trainable
    assert len(model.trainable_weights) > 100  # backbone + head, not just the head
    probs = model.predict(np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_head_follows_the_preprint():
    model = build_model(small_cfg(head_width=24, dropout=0.5))
    names = [layer.__class__.__name__ for layer in model.layers]
    assert names[-4:] == ["Dense", "BatchNormalization", "Dropout", "Dense"]
    assert model.get_layer("head_dense").units == 24
    assert model.get_layer("head_dropout").rate == 0.5
    assert model.get_layer("probabilities").activation.__name__ == "softmax"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A local backbone weights file, as a user would download once and carry offline."""
    path = tmp_path_factory.mktemp("weights dir") / "mnv3_small_no_top.h5"
    backbone = build_backbone(small_cfg())
    backbone.save_weights(str(path))
    return path, backbone


def test_file_weights_load_and_freeze_the_backbone(weights_file):
    path, source = weights_file
    model = build_model(small_cfg(weights=str(path)))
    backbone = backbone_of(model)
    assert not backbone.trainable
    trainable = {w.name for w in model.trainable_weights}
    assert trainable and all("head" in n or "probabilities" in n for n in trainable)
    for a, b in zip(backbone.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fine_tune_unfreezes_only_the_top_layers(weights_file):
    path, _ = weights_file
    model = build_model(small_cfg(weights=str(path), fine_tune=10))
    layers = backbone_of(model).layers
    assert all(not layer.trainable for layer in layers[:-10])
    assert any(layer.trainable and layer.weights for layer in layers[-10:])


def test_missing_or_wrong_weights_file_is_one_line(tmp_path):
    with pytest.raises(WeightsError, match="--weights none"):
        build_model(small_cfg(weights=str(tmp_path / "nope.h5")))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(WeightsError) as info:
        build_model(small_cfg(weights=str(bad)))
    assert "\n" not in str(info.value)


def test_offline_imagenet_download_names_the_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example/weights.h5: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("tf_keras.src.applications.mobilenet_v3.data_utils.get_file", offline, raising=False)
    with pytest.raises(WeightsError) as info:
        build_model(small_cfg(weights="imagenet", image_size=224))
    message = str(info.value)
    assert "--weights PATH" in message and "--weights none" in message
    assert "\n" not in message


def test_spec_carries_labels_and_size():
    spec = model_spec(small_cfg(architecture="small", minimalistic=True))
    assert spec.class_names == ["normal", "covid19", "bacterial", "viral"]
    assert spec.image_size == 64 and spec.minimalistic and spec.architecture == "MobileNetV3Small"
