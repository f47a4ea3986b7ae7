"""One worker of the two-worker test (tests/test_multiworker.py): ``edgecxr train`` with a tiny backbone.

Everything is the real command (TF_CONFIG from --workers, MultiWorkerMirroredStrategy, sharded
input, checkpoints, --resume) except the MobileNetV3 backbone, swapped for two convolutions with
BatchNorm: building and tracing MobileNetV3 under the strategy takes over a minute per worker on
two busy cores, and nothing the test checks depends on which layers the model has (BatchNorm is
kept because its moving statistics are what workers could disagree on).
"""

import sys

import tf_keras as keras

from edgecxr import model as model_mod
from edgecxr.cli import main


def tiny_backbone(cfg):
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny_backbone")


if __name__ == "__main__":
    model_mod.build_backbone = tiny_backbone
    sys.exit(main(sys.argv[1:], prog_name="edgecxr"))
