"""One training configuration, saved as ``config.json`` in every run directory.

Everything that changes what a run produces lives here, so a run can be repeated or resumed from
its own directory and the model card can say exactly how the model was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import CLASS_NAMES, PARTIAL_LABELS
from .errors import EdgeCXRError


# The smallest value of each whole-number setting. validate() checks a config against it and the CLI
# names the option (`--epochs must be at least 1`): one table, so the two cannot disagree. Below 32 px
# MobileNetV3's five stride-2 stages leave less than one pixel.
MINIMUMS = {"epochs": 1, "batch_size": 1, "image_size": 32, "fine_tune": 0, "head_width": 1, "head_epochs": 0,
            "warmup_epochs": 0, "early_stopping": 0, "min_group": 0, "num_threads": 0}

MONITORS = ("val_accuracy", "val_macro_sensitivity", "val_covid_sensitivity", "val_worst_source", "val_loss")


@dataclass
class TrainConfig:
    # data
    data: str = ""
    extra_data: list[str] = field(default_factory=list)  # e.g. ../shared/data/cxr_adult_pneumonia
    splits_file: str = ""  # a user-supplied splits.csv (file,split); empty = make one
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = -1  # seed of the patient split; -1 = `seed`, so seeds can vary on one split
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    equalize: bool = False  # histogram-equalize every image (training and deployment alike)
    # model
    architecture: str = "small"  # small | large
    alpha: float = 1.0
    minimalistic: bool = False
    image_size: int = 224
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    fine_tune: int = 0  # with pretrained weights: unfreeze the top N backbone layers
    # Two-stage fine-tuning (with fine_tune > 0): the first `head_epochs` train the head on the frozen
    # backbone at `learning_rate`, the rest also the top `fine_tune` layers at learning_rate *
    # `backbone_lr_scale`. 0 = one stage (head and unfrozen layers together from the first epoch).
    head_epochs: int = 0
    backbone_lr_scale: float = 0.1
    head_width: int = 512  # the preprint used 2500; 512 keeps the int8 model under 1.5 MB
    dropout: float = 0.5
    # Keras MobileNetV3 uses BatchNorm momentum 0.999, made for long ImageNet runs: from scratch on a
    # few thousand images the moving statistics lag the weights and validation swings by epochs.
    bn_momentum: float = 0.99
    # optimisation
    epochs: int = 15
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    balance: str = "oversample"  # oversample | class_weight | none
    # With oversampling: within each class, give every age group (pediatric/adult) with at least
    # `min_group` training images an equal share, so the rare adult normals are not drowned out.
    balance_groups: bool = False
    min_group: int = 50
    # Labels that are not classes, each mapped to the classes it allows (training scores the summed
    # probability of those; see edgecxr.PARTIAL_LABELS for the defaults and why).
    partial_labels: dict = field(default_factory=lambda: {k: list(v) for k, v in PARTIAL_LABELS.items()})
    # Images of each partial label drawn per epoch, as a share of the largest class (0 = each once).
    partial_share: float = 0.0
    # Distillation: predictions.csv files of teacher models on the training split (`edgecxr evaluate
    # RUN --split train`); their mean probability makes up `distill_weight` of every training target.
    teachers: list[str] = field(default_factory=list)
    distill_weight: float = 0.5
    early_stopping: int = 0  # patience in epochs; 0 = off
    monitor: str = "val_accuracy"  # one of MONITORS; the best checkpoint maximises it (val_loss: minimises)
    # augmentation (training split only)
    augment: bool = True
    augmentation: str = "affine"  # affine (one warp per image) | keras_layers (runs before 2026-11-26)
    flip: bool = True
    rotation_deg: float = 10.0
    zoom: float = 0.1
    shift: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    # Source-cue removal (affine only; 0 = off). The pediatric films were squashed to a square from
    # landscape, the adult ones were not; sources differ in tone curve and in the text and markers
    # near the film's edge. `aspect` stretches width against height by up to that share, `gamma`
    # bends the tone curve by a factor up to exp(gamma), `border` blacks out up to that share of the
    # image at each edge, independently.
    aspect: float = 0.0
    gamma: float = 0.0
    border: float = 0.0
    # run
    seed: int = 42
    strategy: str = "default"  # default | mirrored | multiworker
    num_threads: int = 0  # TensorFlow intra-op threads; 0 = TensorFlow decides

    @property
    def monitor_mode(self) -> str:
        """Whether the best checkpoint has the lowest (a loss) or the highest value of ``monitor``."""
        return "min" if self.monitor == "val_loss" else "max"

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeCXRError(f"{path}: cannot read config ({exc})") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise EdgeCXRError(f"{source}: a config is a JSON object of settings, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeCXRError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        cfg = cls(**_checked_types(data, source))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(msg):
            raise EdgeCXRError(f"invalid config: {msg}")

        if self.architecture not in ("small", "large"):
            bad(f"architecture must be small or large, not {self.architecture!r}")
        for name, low in MINIMUMS.items():
            if getattr(self, name) < low:
                bad(f"{name} must be at least {low}, not {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            bad("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            bad("val_fraction + test_fraction must leave images for training")
        if self.balance not in ("oversample", "class_weight", "none"):
            bad(f"balance must be oversample, class_weight or none, not {self.balance!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            bad(f"lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.augmentation not in ("affine", "keras_layers"):
            bad(f"augmentation must be affine or keras_layers, not {self.augmentation!r}")
        if self.augmentation == "keras_layers" and (self.aspect or self.gamma or self.border):
            bad("aspect, gamma and border need augmentation=affine")
        if not (0 <= self.aspect < 1 and 0 <= self.border < 0.5 and self.gamma >= 0):
            bad("aspect must be in [0, 1), border in [0, 0.5), gamma at least 0")
        if not (0 <= self.dropout < 1 and 0 <= self.label_smoothing < 1):
            bad("dropout and label_smoothing must be in [0, 1)")
        if self.learning_rate <= 0 or self.alpha <= 0:
            bad("learning_rate and alpha must be positive")
        if self.monitor not in MONITORS:
            bad(f"monitor must be one of {', '.join(MONITORS)}, not {self.monitor!r}")
        if not 0 <= self.distill_weight <= 1:
            bad("distill_weight must be in [0, 1]")
        if self.strategy not in ("default", "mirrored", "multiworker"):
            bad(f"strategy must be default, mirrored or multiworker, not {self.strategy!r}")
        if len(self.class_names) < 2:
            bad("need at least two classes")
        for label, allowed in self.partial_labels.items():
            if label in self.class_names:
                bad(f"partial label {label!r} is also a class")
            unknown = sorted(set(allowed) - set(self.class_names))
            # A set with none of the classes is only an error if such images turn up (another
            # class list may not need the default mapping); one with some is checked for typos.
            if unknown and set(allowed) & set(self.class_names):
                bad(f"partial label {label!r} allows {', '.join(unknown)}, which is not a class")
        if self.head_epochs < 0 or self.head_epochs >= self.epochs:
            bad(f"head_epochs must be from 0 to epochs - 1 ({self.epochs - 1}), not {self.head_epochs}")
        if self.head_epochs and not (self.weights not in ("none", "") and self.fine_tune > 0):
            bad("head_epochs (two-stage fine-tuning) needs pretrained weights and fine_tune > 0")
        if not 0 < self.backbone_lr_scale <= 1:
            bad("backbone_lr_scale must be in (0, 1]")


def _checked_types(data: dict, source: str) -> dict:
    """Settings with the type their default has, so ``--set epochs=two`` or ``"image_size": 64.5``
    is a one-line error here rather than a TypeError deep inside Keras or Pillow."""
    defaults = TrainConfig()
    checked = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            value = float(value) if ok else value
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            kind = 'a JSON list of strings, e.g. ["a", "b"]'
        elif isinstance(default, dict):
            ok = isinstance(value, dict) and all(
                isinstance(v, list) and all(isinstance(c, str) for c in v) for v in value.values())
            kind = 'a JSON object of label: [classes], e.g. {"tb": ["bacterial", "viral"]}'
        else:
            ok, kind = isinstance(value, str), "a string"
        if not ok:
            raise EdgeCXRError(f"{source}: {name} must be {kind}, not {value!r}")
        checked[name] = value
    return checked
