"""Shared fixtures: real data from ../shared/data, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from netformer.datasets import shared_data_dir

    return shared_data_dir()


@pytest.fixture(scope="session")
def scrna(shared_data) -> Path:
    return shared_data / "scrna"
