from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real clips live beside a developer's checkout (never committed); a user's clone has none.
REAL_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("real clips not found at ../shared/data/real (only in the team's checkout)")
    return REAL_DATA


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
