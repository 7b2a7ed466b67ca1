"""Shared fixtures: the real data beside the project, and single-threaded torch for stable timings."""

from __future__ import annotations

import sys
import time
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


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory) -> Path:
    """A 64-px segment-anything ViT with random weights: the SAM of the GUI and fault tests (fast)."""
    from gui_helpers import make_tiny_sam

    return make_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


@pytest.fixture
def samatch_home(tmp_path, monkeypatch) -> Path:
    """The plugin's home (sessions, autosaves, checkpoints) in the test's own folder."""
    monkeypatch.setenv("NAPARI_SAMATCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (the real LiteMedSAM behind the napari docks) run only with ``-m integration``."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)


def _finish_qt_workers(timeout_s: float = 120.0) -> None:
    """Stop the plugin's runs and wait for every Qt worker thread, processing queued signals meanwhile.

    A worker still running when the test's viewer closes (e.g. the autosave started by a finished run)
    would otherwise outlive its Qt objects; at interpreter exit that aborts the process (exit 134).
    """
    if "qtpy" not in sys.modules:
        return
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:
        return
    registry = sys.modules.get("napari_samatch._widgets._registry")
    if registry is not None:
        for ctl in list(registry.CONTROLLERS.values()):
            ctl.stop_job()
    pool, deadline = QThreadPool.globalInstance(), time.monotonic() + timeout_s
    while pool.activeThreadCount() and time.monotonic() < deadline:
        QApplication.processEvents()
        pool.waitForDone(20)
    if pool.activeThreadCount():
        raise RuntimeError(f"{pool.activeThreadCount()} Qt worker(s) still running {timeout_s:.0f} s after the test")


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test():
    yield
    _finish_qt_workers()


def pytest_sessionfinish(session, exitstatus):
    _finish_qt_workers()
