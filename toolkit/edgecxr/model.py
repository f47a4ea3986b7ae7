"""MobileNetV3 transfer-learning model, as in the preprint, in Keras 2 (tf_keras).

Backbone: Keras MobileNetV3 Small or Large without its top, rescaling its own 0..255 input. Head:
global average pooling, a wide Dense layer, BatchNorm, Dropout, softmax. tf_keras (not Keras 3) is
used throughout because tensorflow-model-optimization only accepts Keras 2 models.
"""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .errors import ModelFileError, WeightsError, require
from .spec import ModelSpec

OFFLINE_HINT = "use --weights PATH (a local MobileNetV3 no-top .h5 file) or --weights none (train from scratch)"


def _keras():
    require("tensorflow", "train")
    return require("tf_keras", "train")


def build_backbone(cfg: TrainConfig):
    """The MobileNetV3 feature extractor, with the weights :func:`weights_path` finds."""
    keras = _keras()
    factory = {"small": keras.applications.MobileNetV3Small, "large": keras.applications.MobileNetV3Large}[
        cfg.architecture
    ]
    path = weights_path(cfg)
    backbone = factory(input_shape=(cfg.image_size, cfg.image_size, 3), alpha=cfg.alpha,
                       minimalistic=cfg.minimalistic, include_top=False, pooling="avg",
                       include_preprocessing=True, weights=None)
    if path is not None:  # what Keras' weights="imagenet" does too, with the file it downloaded
        try:
            backbone.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001 - h5py/Keras raise many types for a wrong file
            raise WeightsError(f"{path}: not weights for this backbone ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    return backbone


def weights_path(cfg: TrainConfig) -> Path | None:
    """The backbone weights file ``cfg.weights`` names: None for ``none``, the local file (which
    must exist and be an .h5), or for ``imagenet`` Keras' cached copy, downloaded once if missing.

    ``edgecxr train`` calls this before it loads a single image: offline, the ImageNet download used
    to fail (deep inside urllib) only after the images had been read, half a minute on the real data.
    The file name, URL and hash are Keras' own (tf_keras ``applications.mobilenet_v3``), so the
    cache is the one ``weights="imagenet"`` would use.
    """
    if cfg.weights != "imagenet":
        return weights_file(cfg)
    keras = _keras()
    from tf_keras.src.applications import mobilenet_v3 as keras_mobilenet_v3

    name = f"{cfg.architecture}{'_minimalistic' if cfg.minimalistic else ''}_224_{float(cfg.alpha)}_float"
    hashes = keras_mobilenet_v3.WEIGHTS_HASHES.get(name)
    if hashes is None:
        raise WeightsError(
            f"no ImageNet weights for MobileNetV3 {cfg.architecture} alpha {cfg.alpha:g}"
            f"{' minimalistic' if cfg.minimalistic else ''} (Keras has alpha 0.75 and 1.0, minimalistic 1.0 "
            f"only); {OFFLINE_HINT}")
    file_name = f"weights_mobilenet_v3_{name}_no_top_v2.h5"
    try:
        return Path(keras.utils.get_file(file_name, keras_mobilenet_v3.BASE_WEIGHT_PATH + file_name,
                                         cache_subdir="models", file_hash=hashes[1]))
    except Exception as exc:  # noqa: BLE001 - urllib/HTTP/SSL errors vary by platform
        reason = str(exc).rsplit(" -- ", 1)[-1][:80] or exc.__class__.__name__
        raise WeightsError(f"could not download ImageNet weights ({reason}); {OFFLINE_HINT}") from None


def weights_file(cfg: TrainConfig) -> Path | None:
    """The local weights file ``--weights PATH`` names (None for imagenet or none); raises if it is
    missing or not an .h5 (what Keras' load_weights reads for a backbone)."""
    if cfg.weights in ("imagenet", "none", "", None):
        return None
    path = Path(cfg.weights)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; {OFFLINE_HINT}")
    if path.suffix.lower() != ".h5":
        raise WeightsError(f"{path}: not an .h5 weights file; {OFFLINE_HINT}")
    return path


def pretrained(cfg: TrainConfig) -> bool:
    return cfg.weights not in ("none", "", None)


def build_model(cfg: TrainConfig):
    """Backbone + preprint head. Takes float32 (N, S, S, 3) RGB in 0..255, returns class probabilities.

    With pretrained weights the backbone is a frozen feature extractor (run in inference mode so
    its BatchNorm statistics stay ImageNet's), except its top ``fine_tune`` layers; with
    ``weights="none"`` a frozen random backbone would be meaningless, so everything trains.
    """
    keras = _keras()
    backbone = build_backbone(cfg)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    if pretrained(cfg):
        _set_trainable_top(backbone, cfg.fine_tune)
        features = backbone(inputs, training=False)
    else:
        backbone.trainable = True
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = cfg.bn_momentum
        features = backbone(inputs)
    x = keras.layers.Dense(cfg.head_width, activation="relu", name="head_dense")(features)
    x = keras.layers.BatchNormalization(momentum=cfg.bn_momentum, name="head_bn")(x)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(len(cfg.class_names), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"edgecxr_mnv3{cfg.architecture}")


def _set_trainable_top(backbone, n: int) -> None:
    backbone.trainable = n > 0
    if n > 0:
        for layer in backbone.layers[: max(0, len(backbone.layers) - n)]:
            layer.trainable = False


def set_backbone_trainable(model, n: int) -> None:
    """Train only the top ``n`` layers of a built model's backbone (0 = a frozen feature extractor).

    The backbone keeps running in inference mode either way (``build_model`` calls it with
    ``training=False``), so its BatchNorm statistics stay the pretrained ones; recompile after this.
    """
    keras = _keras()
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    _set_trainable_top(backbone, n)


def model_spec(cfg: TrainConfig, **overrides) -> ModelSpec:
    """The deployment facts of a model built from ``cfg``."""
    from . import __version__

    spec = ModelSpec(
        class_names=list(cfg.class_names),
        partial_labels={k: list(v) for k, v in cfg.partial_labels.items()},
        image_size=cfg.image_size,
        architecture="MobileNetV3" + cfg.architecture.capitalize(),
        minimalistic=cfg.minimalistic,
        alpha=cfg.alpha,
        equalize=cfg.equalize,
        version=__version__,
    )
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def load_run_model(run_dir: str | Path, which: str = "best"):
    """Rebuild a run's model from its config and load its checkpoint: ``(model, config)``.

    Weights-only checkpoints plus the saved config avoid Keras serialisation of custom layers,
    and rebuilding with ``weights="none"`` never touches the network.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    ckpt = run_dir / "checkpoints" / f"{which}.weights.h5"
    if not run_dir.is_dir():
        raise ModelFileError(f"run directory not found: {run_dir}")
    if not cfg_path.is_file():
        raise ModelFileError(f"{run_dir} is not an edgecxr run directory (no config.json)")
    if not ckpt.is_file():
        raise ModelFileError(f"{run_dir}: no checkpoint {ckpt.name} (was training interrupted before the first epoch?)")
    cfg = TrainConfig.load(cfg_path)
    build_cfg = TrainConfig.from_dict({**cfg.__dict__, "weights": "none", "head_epochs": 0})
    model = build_model(build_cfg)
    # Re-apply the frozen/trainable layout of the trained model (it does not change inference).
    try:
        model.load_weights(str(ckpt))
    except Exception as exc:  # noqa: BLE001 - h5py/Keras raise many types for a corrupt file
        raise ModelFileError(f"{ckpt}: cannot load checkpoint ({exc.__class__.__name__})") from None
    return model, cfg
