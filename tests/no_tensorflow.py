"""Run a script in a fresh Python where TensorFlow and Keras cannot be imported, as on a Pi.

The runtime path (runtime, preprocess, spec, bench, predict) must work with only numpy, Pillow and a
TFLite interpreter; an import hook that refuses ``tensorflow``/``tf_keras``/``keras`` proves it
on a machine that has them installed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCK_TENSORFLOW = textwrap.dedent(
    """
    import sys

    class BlockTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "keras"):
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    """
)


def run_without_tensorflow(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` (dedented) after the import block, with ``args`` as sys.argv[1:].

    EDGECXR_MODEL is dropped so the script sees the model it is given, not the caller's default."""
    env = {k: v for k, v in os.environ.items() if k != "EDGECXR_MODEL"}
    code = BLOCK_TENSORFLOW + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
