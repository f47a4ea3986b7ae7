"""Progress bars with an ETA on stderr, for every stage that makes the user wait.

One helper so training epochs, image loading, evaluation, int8 calibration and bench all look and
behave alike. A bar is drawn only on a terminal: in a log file or a CI job it would be a wall of
carriage returns nobody reads, so there the stages print only their one-line summaries. Lines
printed while a bar is open (``bar.echo``) clear the bar's line first instead of being glued
onto it. Needs click only (a runtime dependency), no TensorFlow.
"""

from __future__ import annotations

import contextlib
import sys


def enabled(flag: bool | None = None) -> bool:
    """``flag`` if given, else whether stderr is a terminal."""
    if flag is not None:
        return bool(flag)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(show: bool | None, total: int, label: str, count: bool = True):
    """A bar over ``total`` items (``bar.update(n)``, ``bar.echo(line)``); a silent stand-in when
    ``show`` is False, or None and stderr is not a terminal. ``count`` shows ``done/total``, else a
    percentage (for bars whose items are of mixed kinds, e.g. training steps and val images)."""
    if not enabled(show) or total <= 0:
        yield NoBar()
        return
    import click

    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, show_pos=count,
                           width=24) as bar:
        yield _Bar(bar)


class NoBar:
    """What ``progress`` yields when nothing is drawn: updates do nothing, lines are printed."""

    def update(self, n: int = 1) -> None:
        pass

    def echo(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


class _Bar:
    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def echo(self, line: str) -> None:
        sys.stderr.write("\r\033[K" + line + "\n")
        sys.stderr.flush()
        self._bar.render_progress()


def predict_in_batches(predict, images, bar, batch: int = 64):
    """``predict(images)`` a batch at a time, moving ``bar`` by each batch's size.

    ``predict`` maps an array of images to an ``(n, classes)`` array (a Keras model's predict, a
    Classifier's predict_arrays); the result is the same as one call over all images.
    """
    import numpy as np

    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        parts.append(np.asarray(predict(chunk)))
        bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.asarray(predict(images[:0]))
