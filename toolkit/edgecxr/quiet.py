"""Keep TensorFlow's and LiteRT's start-up chatter off the user's terminal, and keep real warnings.

Importing TensorFlow 2.21 prints about ten lines from C++ (absl's "before InitializeLog" banner,
oneDNN, "could not find cuda drivers", the cpu_feature_guard, twice, since two libraries load
absl), and the first device look-up prints ``E0000 ... failed call to cuInit`` on every CPU-only
machine. The converter adds "Ignored output_format", op counts and ``fully_quantize: 0 ...``, and
every interpreter's first XNNPACK delegate ``INFO: Created TensorFlow Lite XNNPACK delegate``. None
of it is something a user can act on, and an "E0000 CUDA error" on a CPU-only machine reads as a
failure.

``TF_CPP_MIN_LOG_LEVEL`` does not reach the lines written before absl is initialised, and these
are C++ writes to file descriptor 2, which Python cannot filter. So ``filtered_stderr`` points
fd 2 at a temporary file for the duration of a block, then copies every line that is *not* in
``NOISE`` back to the real stderr: a warning or an error TensorFlow prints there still reaches
the user, only later. Python-level writes (our own messages, progress bars, Python warnings) go
straight to the real stderr while the block runs, so a progress bar inside it still moves.

Only the standard library is used: the runtime calls this too and imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading

# Lines nobody can act on: one pattern per source, each matched against a whole line.
NOISE = tuple(re.compile(p) for p in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"[IW]\d{4} .*\] oneDNN custom operations are on\..*",
    r"[IW]\d{4} .*\] Could not find cuda drivers on your machine, GPU will not be used\.",
    r"[IW]\d{4} .*cpu_feature_guard\.cc.*",
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow with the appropriate compiler flags\.",
    r"[IW]\d{4} .*\] (Ignored output_format|Ignored drop_control_dependency)\.",
    r"[IW]\d{4} .*\] Skipping runtime version metadata in the model\..*",
    r"[IW]\d{4} .*\] Estimated count of arithmetic ops: .*",
    r"[IW]\d{4} .*\] Number of eligible GPUs .*",
    r"[IW]\d{4} .*\] Starting new session",
    r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+",
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
))
# On a machine with an NVIDIA driver a failed cuInit is a real problem worth seeing.
CUINIT = re.compile(r"E\d{4} .*\] failed call to cuInit: .*")

_lock = threading.RLock()
_active = threading.local()


def is_noise(line: str) -> bool:
    """Whether one line of stderr is start-up chatter (see the module docstring)."""
    line = line.rstrip("\r\n")
    if any(p.fullmatch(line) for p in NOISE):
        return True
    return bool(CUINIT.fullmatch(line)) and not os.path.exists("/proc/driver/nvidia")


def filter_text(text: str) -> str:
    """``text`` without its noise lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


@contextlib.contextmanager
def filtered_stderr():
    """Hide ``NOISE`` lines written to file descriptor 2 inside the block; pass the rest on after it.

    Re-entrant (an inner block does nothing). If fd 2 cannot be redirected (no such descriptor,
    an unusual platform), the block runs unfiltered rather than failing.
    """
    if getattr(_active, "depth", 0):
        _active.depth += 1
        try:
            yield
        finally:
            _active.depth -= 1
        return
    with _lock:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        capture = tempfile.TemporaryFile(mode="w+b")
        swapped = None
        try:
            os.dup2(capture.fileno(), 2)
            swapped = _point_sys_stderr_at(saved)
            _active.depth = 1
            try:
                yield
            finally:
                _active.depth = 0
                if swapped is not None:
                    wrapper, sys.stderr = sys.stderr, swapped
                    with contextlib.suppress(Exception):
                        wrapper.close()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            capture.seek(0)
            kept = filter_text(capture.read().decode("utf-8", "replace"))
            capture.close()
            if kept:
                stream = sys.stderr or sys.__stderr__
                if stream is not None:
                    stream.write(kept)
                    stream.flush()


def _point_sys_stderr_at(fd: int):
    """While fd 2 is captured, let Python's own stderr writes reach the terminal directly.

    Only when ``sys.stderr`` writes to fd 2 (not under pytest's capsys or a GUI's replacement).
    Returns the stream to put back, or None when nothing was swapped.
    """
    current = sys.stderr
    try:
        if current is None or current.fileno() != 2:
            return None
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return None
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(fd), "wb", buffering=0),
                                  encoding=getattr(current, "encoding", None) or "utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    return current


def import_tensorflow():
    """Import TensorFlow (and initialise its devices) with the start-up chatter filtered out.

    ``TF_CPP_MIN_LOG_LEVEL=1`` (unless the user set it) drops TensorFlow's later INFO lines and
    keeps its warnings and errors.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    already = "tensorflow" in sys.modules
    with filtered_stderr():
        import tensorflow as tf

        if not already:
            tf.config.list_physical_devices()  # where cuInit is called and fails without a GPU
    return tf


def plain_warnings() -> None:
    """Show Python warnings as ``warning: MESSAGE`` instead of ``/path/data.py:403: DataWarning:
    MESSAGE`` followed by the line of source that raised it.

    The source location helps whoever wrote the code, not the user reading the warning. Warnings
    from other packages keep their category and say where they came from, in the same one line.
    """
    import warnings

    package_dir = os.path.dirname(os.path.abspath(__file__))

    def format_warning(message, category, filename, lineno, line=None):
        text = str(message).strip() or category.__name__
        if os.path.abspath(filename).startswith(package_dir + os.sep):
            return f"warning: {text}\n"
        return f"warning: {text} ({category.__name__} from {_origin(filename)})\n"

    warnings.formatwarning = format_warning


def _origin(filename: str) -> str:
    """The package a file belongs to (``tensorflow`` for .../site-packages/tensorflow/...)."""
    parts = os.path.normpath(filename).split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return os.path.splitext(os.path.basename(filename))[0]
