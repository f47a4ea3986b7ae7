"""What to export and how: the quantization modes and :class:`ExportOptions`, including file names.

A module of its own so that the stages that carry out an export (:mod:`edgecxr.export`,
:mod:`edgecxr.selective`, :mod:`edgecxr.qat`) all import the options from here and imports run one
way (``export`` -> ``selective`` -> ``export_options``). No TensorFlow, no numpy: just the facts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from . import DEFAULT_MAX_DROP
from .errors import EdgeCXRError

DEFAULT_REPRESENTATIVE = 200
# --name: the prefix of every file an export writes, so nothing that a path or a shell would split.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --- quantization modes and options -------------------------------------------------------------


@dataclass(frozen=True)
class QuantMode:
    """One way to store and run the model. Modes are data: the CLI, file names and checks read them."""

    name: str  # the --quantize value and ModelSpec.quantization
    precision: str  # goes into the file name
    io_types: tuple[str, ...]  # allowed --io values; the first is the default
    calibrated: bool  # needs a representative data set (and allows --keep-float / --qat)
    label: str  # for people: "full-integer int8"
    summary: str


MODES = {
    m.name: m
    for m in (
        QuantMode("none", "float32", ("float32",), False, "float32", "float32 weights and math"),
        QuantMode("float16", "float16", ("float32",), False, "float16", "float16 weights, float32 math"),
        QuantMode("dynamic", "dynamic", ("float32",), False, "dynamic-range int8",
                  "int8 weights, float activations (dynamic-range quantization)"),
        QuantMode("int8", "int8", ("uint8", "int8", "float32"), True, "full-integer int8",
                  "int8 weights and activations, calibrated on training images"),
    )
}


@dataclass
class ExportOptions:
    """What to export and how strictly to check it. ``None`` means "the mode's default"."""

    quantize: str = "int8"
    io: str | None = None  # input/output tensor type; int8 mode only (default uint8)
    force: bool = False  # overwrite an existing export; export a model metrics.useless_reasons calls useless
    max_drop: float = DEFAULT_MAX_DROP  # accuracy points the export may lose, in total and per subgroup
    representative: int | None = None  # calibration images (int8 only; default 200)
    keep_float: str | Sequence[str] | None = None  # "auto", "auto:K" or layer names (int8 only)
    qat_epochs: int | None = None  # quantization-aware fine-tuning epochs (int8 only)
    data: Sequence[str] = ()  # override the run's data location (first: data, rest: extra data)
    hard_swish: str = "auto"  # auto | keras | relu6: how int8 graphs spell hard-swish
    latency: bool = True  # time the exported model (1 thread) for the model card
    name: str = "edgecxr"  # --name: the prefix of the file name (see stem)

    @classmethod
    def for_float32(cls, **kw) -> "ExportOptions":
        return cls(quantize="none", **kw)

    @classmethod
    def for_float16(cls, **kw) -> "ExportOptions":
        return cls(quantize="float16", **kw)

    @classmethod
    def for_dynamic(cls, **kw) -> "ExportOptions":
        return cls(quantize="dynamic", **kw)

    @classmethod
    def for_int8(cls, io: str = "uint8", representative: int = DEFAULT_REPRESENTATIVE, **kw) -> "ExportOptions":
        return cls(quantize="int8", io=io, representative=representative, **kw)

    @property
    def mode(self) -> QuantMode:
        return MODES[self.quantize]

    @property
    def io_type(self) -> str:
        return self.io or self.mode.io_types[0]

    @property
    def stem(self) -> str:
        """The one name of this export: the file stem, ``spec.name`` and the card's name.

        ``<name>_<precision>[_<io>io][_keepfloat|_qat]``, read left to right as what a caller must
        know to use the file:

        - ``<name>``: ``--name`` (default ``edgecxr``);
        - ``<precision>``: ``float32``, ``float16``, ``dynamic`` or ``int8`` (:data:`MODES`);
        - ``_<io>io``: the input/output tensor type, always given for int8 (``_uint8io``,
          ``_int8io``, ``_float32io``), since that is what the caller has to feed, even for the
          default uint8; the float modes take float32 only and say nothing;
        - ``_keepfloat``: int8 with layers kept in float (``--keep-float``); ``_qat``: int8 after
          quantization-aware fine-tuning (``--qat``). The two are never combined (validated()).

        So ``edgecxr_float16``, ``edgecxr_int8_uint8io``, ``edgecxr_int8_uint8io_qat``: every
        variant its own file, and one export never overwrites another kind. An explicit
        ``hard_swish`` other than the mode's default (API only) adds ``_<spelling>hswish``.
        """
        io_part = f"_{self.io_type}io" if self.mode.calibrated else ""
        variant = "_keepfloat" if self.keep_float else "_qat" if self.qat_epochs else ""
        # A hard-swish spelling other than the mode's own default is another graph: its own file.
        hswish = f"_{self.hard_swish}hswish" if self.hard_swish_resolved != self._hard_swish_default else ""
        return f"{self.name}_{self.mode.precision}{io_part}{variant}{hswish}"

    @property
    def _hard_swish_default(self) -> str | None:
        """What ``hard_swish="auto"`` means for this mode (None: float modes convert the model as is)."""
        if self.quantize in ("none", "float16"):
            return None
        return "relu6" if self.quantize == "int8" else "keras"

    @property
    def hard_swish_resolved(self) -> str | None:
        """The hard-swish spelling this export converts (None for float exports, which ignore it)."""
        if self._hard_swish_default is None:
            return None
        return self._hard_swish_default if self.hard_swish == "auto" else self.hard_swish

    @property
    def file_name(self) -> str:
        return self.stem + ".tflite"

    def validated(self) -> "ExportOptions":
        """Check the combination; flags that do not apply to the mode are rejected by name."""
        if self.quantize not in MODES:
            raise EdgeCXRError(f"unknown --quantize {self.quantize!r}; choose one of {', '.join(MODES)}")
        mode = self.mode
        if self.io is not None and self.io not in mode.io_types:
            if self.io in MODES["int8"].io_types:
                raise EdgeCXRError(
                    f"--io {self.io} applies only to --quantize int8 "
                    f"(a {mode.name} model takes {mode.io_types[0]} input)"
                )
            raise EdgeCXRError(f"unknown --io {self.io!r}; choose uint8, int8 or float32")
        if not mode.calibrated:
            for flag, value in (("--representative", self.representative), ("--keep-float", self.keep_float),
                                ("--qat", self.qat_epochs)):
                if value:
                    raise EdgeCXRError(f"{flag} applies only to --quantize int8, not {mode.name}")
        if self.keep_float and self.qat_epochs:
            raise EdgeCXRError("use --keep-float or --qat, not both: try one remedy at a time")
        if self.representative is not None and self.representative < 1:
            raise EdgeCXRError("--representative must be at least 1")
        if self.qat_epochs is not None and self.qat_epochs < 0:
            raise EdgeCXRError("--qat must be a positive number of epochs")
        if self.hard_swish not in ("auto", "keras", "relu6"):
            raise EdgeCXRError(f"hard_swish must be auto, keras or relu6, not {self.hard_swish!r}")
        if not NAME_PATTERN.fullmatch(self.name or ""):
            raise EdgeCXRError(f"--name must be letters, digits, '.', '_' or '-' (it starts every file "
                               f"name of the export), not {self.name!r}")
        if not math.isfinite(self.max_drop):
            raise EdgeCXRError("--max-drop must be a number of accuracy points")
        data = (self.data,) if isinstance(self.data, (str, Path)) else tuple(self.data or ())
        return replace(
            self,
            io=self.io_type,
            representative=(self.representative or DEFAULT_REPRESENTATIVE) if mode.calibrated else None,
            keep_float=_parse_keep_float(self.keep_float),
            qat_epochs=self.qat_epochs or 0,
            data=tuple(str(d) for d in data),
        )


def _parse_keep_float(value) -> tuple[str, ...] | None:
    """``"auto"`` -> ("auto",), ``"auto:5"`` -> ("auto:5",), ``"a,b"`` -> ("a", "b")."""
    if not value:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items:
        return None
    if items[0].lower().startswith("auto"):
        _, _, k = items[0].partition(":")
        if len(items) > 1 or (k and not k.isdigit()) or k == "0":
            raise EdgeCXRError(f"--keep-float takes auto, auto:K (K >= 1) or layer names, not {value!r}")
        return (f"auto:{int(k)}",) if k else ("auto",)
    return tuple(items)
