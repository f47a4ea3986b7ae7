"""The recipes in benchmarks/ still describe runnable trainings, and the shipped one the shipped model.

SHIPPED_MODEL.md says each row is `edgecxr train --config benchmarks/recipes/NAME.json` away; that
stops being true silently when a setting is renamed or a check is tightened. No training here.
"""

import json
import re
from pathlib import Path

import pytest

from edgecxr.config import TrainConfig
from edgecxr.errors import EdgeCXRError
from edgecxr.spec import read_spec

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "benchmarks" / "recipes").glob("*.json"))


def test_there_are_recipes():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_as_a_valid_config(recipe):
    cfg = TrainConfig.load(recipe)
    assert cfg.data, f"{recipe.name} names no data"
    # data paths are relative to the repository root and never point into it but for runs/
    for path in [cfg.data, *cfg.extra_data]:
        assert not Path(path).is_absolute(), f"{recipe.name}: {path} is absolute"
        assert path.startswith(("../shared/", "runs/")), f"{recipe.name}: {path}"
    for teacher in cfg.teachers:
        assert teacher.startswith("runs/") and teacher.endswith("predictions.csv"), teacher


def test_a_misspelled_setting_in_a_recipe_is_refused(tmp_path):
    data = json.loads(RECIPES[0].read_text())
    data["boarder"] = 0.08
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(EdgeCXRError, match="boarder"):
        TrainConfig.load(bad)


def test_ship_script_trains_the_recipe_that_matches_the_shipped_model():
    script = (ROOT / "benchmarks" / "ship_model.sh").read_text()
    named = re.findall(r"--config (benchmarks/recipes/[\w.-]+\.json)", script)
    assert len(named) == 1, named
    cfg = TrainConfig.load(ROOT / named[0])
    for model in ("edgecxr_float16.tflite", "edgecxr_float32.tflite"):
        spec = read_spec(ROOT / "models" / model)
        assert spec.image_size == cfg.image_size
        assert spec.architecture == "MobileNetV3" + cfg.architecture.capitalize()
        assert spec.minimalistic == cfg.minimalistic
        assert spec.alpha == cfg.alpha
        assert spec.equalize == cfg.equalize
        assert spec.class_names == cfg.class_names
    card = (ROOT / "models" / "MODEL_CARD.md").read_text()
    assert named[0] in card or Path(named[0]).name in card
