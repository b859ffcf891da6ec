"""Fixtures: the shared evaluation data (skipped when absent) and tiny synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_synthetic import shared_data_dir, write_instance_dataset


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared evaluation data absent ({root}); set DFF_SHARED_DATA")
    return root


@pytest.fixture
def synthetic_paris(tmp_path: Path) -> Path:
    root = tmp_path / "paris"
    write_instance_dataset(root)
    return root
