"""Atomic file writes: a crash or Ctrl-C never leaves a half-written artifact behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(tmp: str) -> None:
    """mkstemp creates 0600 files; give artifacts the mode a plain open() would."""
    os.chmod(tmp, 0o666 & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _usual_mode(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_temp_path(path: str | Path) -> Path:
    """A temporary sibling of ``path`` for writers that need a file name (Keras, matplotlib).

    Write to it, then ``os.replace(tmp, path)``. The last two suffixes are kept because writers
    pick the format from them (Keras reads ``.weights.h5`` as a different format from ``.h5``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[: len(path.name) - len(suffix)]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    _usual_mode(tmp)
    return Path(tmp)


def refuse_overwrite(path: str | Path, force: bool) -> None:
    """Raise unless ``path`` is absent or the user said --force."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
