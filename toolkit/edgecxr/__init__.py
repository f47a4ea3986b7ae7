"""edgecxr: a chest X-ray classifier from training to a phone, tablet or Raspberry Pi.

Importing the package is cheap and imports no TensorFlow; each pipeline stage lives in its own
module (data, model, train, export, runtime, metrics, bench, report) and is imported when used.
"""

__version__ = "0.1.0"

CLASS_NAMES = ("normal", "covid19", "bacterial", "viral")
