"""One training configuration, saved as ``config.json`` in every run directory.

Everything that changes what a run produces lives here, so a run can be repeated or resumed from
its own directory and the model card can say exactly how the model was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import CLASS_NAMES
from .errors import EdgeCXRError


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
    # Partial-label images (pneumonia without subtype) drawn per epoch, as a share of one class
    # (0 = each once).
    partial_share: float = 0.0
    # Distillation: predictions.csv files of teacher models on the training split (`edgecxr evaluate
    # RUN --split train`); their mean probability makes up `distill_weight` of every training target.
    teachers: list[str] = field(default_factory=list)
    distill_weight: float = 0.5
    early_stopping: int = 0  # patience in epochs; 0 = off
    monitor: str = "val_accuracy"
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeCXRError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(msg):
            raise EdgeCXRError(f"invalid config: {msg}")

        if self.architecture not in ("small", "large"):
            bad(f"architecture must be small or large, not {self.architecture!r}")
        if self.image_size < 32:
            bad("image_size must be at least 32")
        if self.batch_size < 1 or self.epochs < 1:
            bad("batch_size and epochs must be positive")
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
        if not 0 <= self.distill_weight <= 1:
            bad("distill_weight must be in [0, 1]")
        if self.strategy not in ("default", "mirrored", "multiworker"):
            bad(f"strategy must be default, mirrored or multiworker, not {self.strategy!r}")
        if len(self.class_names) < 2:
            bad("need at least two classes")
