import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Keep TensorFlow quiet and single-process friendly in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


# Tests that use these fixtures train or export a MobileNetV3: they are what makes the suite take
# minutes. They are marked `long` (CI runs them; `pytest -m "not long"` is the quick loop).
LONG_FIXTURES = {"trained_run", "easy_data", "tiny_run", "tiny_run_factory", "exported"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if LONG_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.long)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def synthetic_folder(tmp_path):
    from synthetic import make_dataset

    return make_dataset(tmp_path / "data with spaces", per_class=12, size=64, layout="folders")


@pytest.fixture
def synthetic_manifest(tmp_path):
    from synthetic import make_dataset

    return make_dataset(tmp_path / "manifest data", per_class=12, size=64, layout="manifest")


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    """A tiny trained classifier exported three ways (float32, int8 with uint8 I/O, int8 with int8 I/O).

    Built once per session (a few seconds): 32 px RGB input 0..255 with a Rescaling layer, three
    strided convolutions, global average pooling and a 4-way softmax, fitted briefly on synthetic
    images so its outputs are far from uniform. Each file carries an embedded edgecxr spec and sits
    in a directory whose name has a space in it. Returns paths, the bare flatbuffers, the Keras
    model and its training images.
    """
    from types import SimpleNamespace

    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from synthetic import CLASSES, synthetic_image

    from edgecxr.spec import ModelSpec, embed_spec

    size = 32
    rng = np.random.default_rng(0)
    labels = np.arange(64) % len(CLASSES)
    gray = [synthetic_image(CLASSES[i], rng, size) for i in labels]
    images = np.stack([np.repeat(g[..., None], 3, axis=-1) for g in gray])  # uint8 (64, 32, 32, 3)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), dtype="float32")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (8, 16, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(images.astype("float32"), labels, epochs=30, batch_size=16, verbose=0)

    # Converting a concrete function skips the SavedModel round trip of from_keras_model (~1 s each).
    serve = tf.function(lambda x: model(x, training=False))
    concrete = serve.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))

    def convert(io_type):
        import warnings

        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
        if io_type is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [images[i : i + 1].astype("float32")] for i in range(len(images))
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        with warnings.catch_warnings():
            # TFLite asks for input statistics even though the representative data supplies them.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
            return converter.convert()

    root = tmp_path_factory.mktemp("tiny") / "tiny models"
    root.mkdir()
    paths, flatbuffers = {}, {}
    for name, io_type, quant in (
        ("float32", None, "none"),
        ("uint8", tf.uint8, "int8"),
        ("int8", tf.int8, "int8"),
    ):
        spec = ModelSpec(
            class_names=list(CLASSES),
            image_size=size,
            architecture="tiny-test-cnn",
            quantization=quant,
            io_dtype=name,
            name=f"tiny {name}",
        )
        paths[name] = root / f"tiny {name}.tflite"
        flatbuffers[name] = convert(io_type)
        paths[name].write_bytes(embed_spec(flatbuffers[name], spec))
    return SimpleNamespace(
        dir=root,
        float32=paths["float32"],
        uint8=paths["uint8"],
        int8=paths["int8"],
        flatbuffers=flatbuffers,  # the bare converter output, without the embedded spec
        keras_model=model,
        images=images,
        labels=labels,
        image_size=size,
    )


# --- tiny trained run directories (export tests; reusable by any test that needs a run) --------


@pytest.fixture(scope="session")
def tiny_run_factory(tmp_path_factory):
    """Make (once per variant and session) a run directory laid out as ``edgecxr train`` does.

    ``make(minimalistic=False)`` returns the path of a run with config.json, splits.csv and
    checkpoints/best.weights.h5: MobileNetV3Small from scratch at 32 px with a 16-unit head,
    fitted for a few seconds on a synthetic manifest (two sources, so pediatric/adult groups
    exist) until it clearly beats chance. The data set, like a user's, lives in a path with
    spaces. Built by hand rather than with edgecxr.train so it stays fast (~15 s per variant).
    """
    made = {}

    def make(minimalistic: bool = False):
        if minimalistic in made:
            return made[minimalistic]
        import numpy as np
        import tf_keras as keras
        from synthetic import make_dataset

        from edgecxr import data as data_mod
        from edgecxr.config import TrainConfig
        from edgecxr.model import build_model

        root = tmp_path_factory.mktemp("tiny run")
        manifest = make_dataset(root / "data set", per_class=16, size=32, layout="manifest")
        run = root / ("run minimalistic" if minimalistic else "run standard")
        cfg = TrainConfig(
            data=str(manifest), image_size=32, weights="none", architecture="small",
            minimalistic=minimalistic, head_width=16, dropout=0.0, epochs=15, batch_size=16,
            learning_rate=5e-3, val_fraction=0.25, test_fraction=0.0, seed=0,
        )
        records = data_mod.load_records(manifest)
        splits = data_mod.split_by_patient(records, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        run.mkdir()
        data_mod.save_splits(run / "splits.csv", records, splits)
        images, kept = data_mod.load_split_arrays(records, splits, "train", cfg.image_size)
        targets = np.stack([data_mod.target_vector(r.label, cfg.class_names) for r in kept])

        keras.utils.set_random_seed(cfg.seed)
        model = build_model(cfg)
        for layer in model.submodules:
            # A few dozen steps: let BatchNorm's moving statistics catch up with the weights.
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.8
        model.compile(keras.optimizers.Adam(cfg.learning_rate), "categorical_crossentropy")
        model.fit(images.astype("float32"), targets, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  shuffle=True, verbose=0)
        cfg.save(run / "config.json")
        (run / "checkpoints").mkdir()
        model.save_weights(str(run / "checkpoints" / "best.weights.h5"))
        made[minimalistic] = run
        return run

    return make


@pytest.fixture(scope="session")
def tiny_run(tiny_run_factory):
    """A trained standard (hard-swish, squeeze-excite) MobileNetV3Small run directory, 32 px."""
    return tiny_run_factory(minimalistic=False)
