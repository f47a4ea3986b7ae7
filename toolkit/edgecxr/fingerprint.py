"""A fingerprint of a model's training images, so ``bench`` and ``evaluate`` can say when they score them.

Accuracy on a model's own training images is not a test result, yet ``edgecxr bench --data DIR``
scores whatever it is given. ``edgecxr export`` therefore writes the sorted set of the training
split's content hashes (the first 8 bytes of the SHA-256 of each file's bytes, in hex) into the
model's sidecar ``<model>.json`` under :data:`FINGERPRINT_KEY`; scoring hashes the scored files
the same way and counts the matches (:func:`count_training_images`).

Why content and not paths: a copy of the data elsewhere (another machine, a renamed folder) is
still recognised, and no file name, and so no patient id, leaves the training machine. Why 8
bytes: the chance that one of 10,000 scored files collides with one of 10,000 training files is
about 10^8 / 2^64, i.e. 5e-12, at 17 bytes per image in the JSON. Why only in the sidecar and
not inside the ``.tflite``: the shipped model's 4,363 distinct training images take 100 KB, which
the runtime and the app would load without needing it. A model without a
fingerprint (older exports, a bare file) simply gets no note.

Standard library only (no numpy, no TensorFlow): it runs in the runtime's ``bench``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Iterable

from .spec import sidecar_path

FINGERPRINT_KEY = "training_fingerprint"
HASH_BYTES = 8


def content_hash(path: str | Path) -> str | None:
    """The first 8 bytes of the SHA-256 of the file's bytes, as 16 hex digits; None if unreadable.

    Remembered per path for the process: bench scores the same files once per model and thread
    count, and would otherwise read and hash each of them again for every row."""
    return _content_hash(str(path))


@functools.lru_cache(maxsize=None)
def _content_hash(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.digest()[:HASH_BYTES].hex()


def fingerprint(files: Iterable[str | Path]) -> list[str]:
    """The sorted, de-duplicated content hashes of ``files`` (unreadable files are left out)."""
    return sorted({h for h in map(content_hash, files) if h is not None})


def read_fingerprint(model_path: str | Path) -> frozenset[str] | None:
    """The training fingerprint in the model's sidecar JSON, or None when it has none."""
    side = sidecar_path(model_path)
    try:
        hashes = json.loads(side.read_text(encoding="utf-8")).get(FINGERPRINT_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return frozenset(hashes) if isinstance(hashes, list) and hashes else None


def count_training_images(model_path: str | Path, files: Iterable[str | Path]) -> int | None:
    """How many of ``files`` have the content of one of the model's training images; None without
    a fingerprint (then nothing can be said either way)."""
    known = read_fingerprint(model_path)
    if known is None:
        return None
    return sum(1 for f in files if content_hash(f) in known)


def training_note(n: int, total: int) -> str:
    """The one line bench and evaluate print when they scored training images."""
    return (f"{n} of {total} scored images are this model's training images: accuracy on them is not a "
            "test result (score a held-out split with --splits FILE --split test)")
