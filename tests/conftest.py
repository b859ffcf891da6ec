"""Shared fixtures: real sample photos from scikit-image and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from descriptors.sample_photos import sample_photo

REPO_ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread: the suite's tensors are small, and on a 2-core machine torch's thread
# pool turns them into scheduling stalls (measured: tests/descriptors 114 s -> 19 s).
torch.set_num_threads(1)
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina", "camera", "immunohistochemistry")


def shared_data_dir() -> Path:
    return Path(os.environ.get("DFF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared evaluation data absent at {root} (set DFF_SHARED_DATA to run this test)")
    return root


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, Image.Image]:
    return {name: sample_photo(name) for name in SAMPLE_PHOTOS}


@pytest.fixture(scope="session")
def default_backbone():
    from descriptors.backbones import load_backbone

    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="session")
def ray_local():
    """One private in-process Ray for the session's Ray tests (2 CPUs, a 300 MB object store)."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from indexer.ray_cluster import connect

    ray = connect("local", num_cpus=2, object_store_mb=300)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # Serve never started
        pass
    ray.shutdown()
