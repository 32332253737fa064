"""Shared test setup: smoke preset, one thread per process, and fixtures for optional real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GLANCE_PRESET", "smoke")
# One thread per test process, and for the kernels and ranks it starts: `make test` runs the tests on
# every core at once (pytest-xdist), and two threads per process on a two-core machine would fight.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from glance_lite.common.paths import shared_category, shared_data_dir  # noqa: E402


def _need(p: Path | None, what: str) -> Path:
    if p is None:
        pytest.skip(f"shared real data not present: {what}")
    return p


@pytest.fixture(scope="session")
def shared_bottle() -> Path:
    """The real MVTec AD ``bottle`` category (its root is the parent folder)."""
    return _need(shared_category("mvtec_ad", "bottle"), "mvtec_ad/bottle")


@pytest.fixture(scope="session")
def shared_hazelnut() -> Path:
    """Intel's hazelnut toy set in MVTec layout."""
    return _need(shared_category("hazelnut_toy", "hazelnut"), "hazelnut_toy/hazelnut")


@pytest.fixture(scope="session")
def shared_cifar() -> Path:
    """Folder with ``cifar10_test.npz`` and ``cifar10_train_1000_per_class.npz``."""
    s = shared_data_dir()
    p = s / "cifar10" if s else None
    return _need(p if p and p.is_dir() else None, "cifar10")
