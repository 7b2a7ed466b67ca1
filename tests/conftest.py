"""Shared fixtures: the real data beside the project, and single-threaded torch for stable timings."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` from the project root; tests that need it skip with a reason when it's absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (expected ../shared/data beside the project)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def acdc(shared_data: Path) -> Path:
    root = shared_data / "ACDC"
    if not (root / "train_slices.list").is_file():
        pytest.skip(f"ACDC not found in {shared_data}")
    return root


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (the real LiteMedSAM behind the napari docks) run only with ``-m integration``."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
