"""Fixtures of the indexer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from indexer_fixtures import write_photos


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_config():
    """Settings that keep the real backbone fast in tests (128 px, K=4, few NMF iterations)."""
    from indexer.config import IndexConfig

    return IndexConfig(image_size=128, k=4, max_iter=50, batch_size=4, workers=2, shard_size=4)


@pytest.fixture(scope="session")
def backbone():
    from descriptors.backbones import load_backbone

    return load_backbone("efficientnet-lite0")
