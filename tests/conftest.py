import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Keep TensorFlow quiet and single-process friendly in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def synthetic_folder(tmp_path):
    from synthetic import make_dataset

    return make_dataset(tmp_path / "data with spaces", per_class=12, size=64, layout="folders")


@pytest.fixture
def synthetic_manifest(tmp_path):
    from synthetic import make_dataset

    return make_dataset(tmp_path / "manifest data", per_class=12, size=64, layout="manifest")
