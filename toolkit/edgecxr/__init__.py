"""edgecxr: a chest X-ray classifier from training to a phone, tablet or Raspberry Pi.

Importing the package is cheap and imports no TensorFlow; each pipeline stage lives in its own
module (data, model, train, export, runtime, metrics, bench, report) and is imported when used.
"""

__version__ = "0.1.0"

CLASS_NAMES = ("normal", "covid19", "bacterial", "viral")

# Partial labels: what a collection knows about an image that is not one of the classes, as the set
# of classes it allows. Training scores such an image on the summed probability of its allowed
# classes (evidence against the others, for none of them in particular); evaluation counts it right
# when the model calls one of them. A TrainConfig can change or extend this (``partial_labels``).
PARTIAL_LABELS = {
    # NIH pneumonia without a subtype: bacterial or viral
    "pneumonia_unspecified": ("bacterial", "viral"),
    # TBX11K tuberculosis (adult, pre-2020): neither normal nor COVID-19
    "tuberculosis": ("bacterial", "viral"),
}

# Accuracy points an int8 export may lose against Keras (`edgecxr export --max-drop`, the accuracy
# guard); `edgecxr bench` uses the same tolerance to call two files equally accurate.
DEFAULT_MAX_DROP = 1.0
