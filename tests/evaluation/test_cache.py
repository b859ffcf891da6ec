"""Activation cache: content keys, one forward per image, resume after an interruption."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_synthetic import pattern_image

from descriptors.backbones import load_backbone
from descriptors.images import ImageDecodeError
from evaluation.cache import ActivationCache, ImageRequest, crop_image


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("efficientnet-lite0")


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i}.png"
        pattern_image("checker" if i % 2 else "rings", seed=i, size=64).save(path)
        paths.append(path)
    return paths


def test_cache_directory_names_every_key_part(tmp_path: Path, backbone) -> None:
    cache = ActivationCache(tmp_path, backbone, 64)
    name = cache.directory.name
    assert name.startswith("efficientnet-lite0-" + backbone.weights_sha256[:16])
    assert name.endswith("-64-float16-jd2-tr")
    assert ActivationCache(tmp_path, backbone, 96).directory != cache.directory


def test_one_forward_per_image_content_and_resume(tmp_path: Path, backbone) -> None:
    paths = _images(tmp_path / "imgs", 3)
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cache = ActivationCache(tmp_path / "cache", backbone, 64)
    requests = [ImageRequest(p) for p in [*paths[:2], broken, paths[2]]]
    # the run stops at the broken file: what was computed before it is kept, no temp file is left
    with pytest.raises(ImageDecodeError):
        cache.ensure(requests, progress=False)
    assert cache.forwards == 2
    assert not list(cache.directory.rglob(".tmp-*"))
    # "fix" the file and run again: only the two remaining images are computed
    shutil.copy(paths[0].with_name("img_1.png"), broken)
    resumed = ActivationCache(tmp_path / "cache", backbone, 64)
    # broken now has img_1's content (cached already): only img_2 is computed
    assert resumed.ensure(requests, progress=False) == 1
    assert resumed.ensure(requests, progress=False) == 0
    assert len(list(resumed.directory.rglob("*.npz"))) == 3
    # a renamed copy hits the cache (the key is the content hash)
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(paths[2], copy)
    assert resumed.ensure([ImageRequest(copy)], progress=False) == 0


def test_cached_activation_equals_a_direct_forward(tmp_path: Path, backbone) -> None:
    path = _images(tmp_path / "imgs", 1)[0]
    direct = backbone.extract([backbone.preprocess(pattern_image("rings", seed=0, size=64), 64)])[0]
    for dtype, tolerance in (("float32", 1e-6), ("float16", 5e-3)):
        cached = ActivationCache(tmp_path / dtype, backbone, 64, dtype).load(ImageRequest(path))
        assert cached.image_wh == (64, 64)
        assert torch.allclose(cached.activation, direct, rtol=tolerance, atol=tolerance)


def test_crops_are_cached_separately(tmp_path: Path, backbone) -> None:
    path = _images(tmp_path / "imgs", 1)[0]
    cache = ActivationCache(tmp_path / "cache", backbone, 64)
    full = cache.load(ImageRequest(path))
    crop = cache.load(ImageRequest(path, (0.0, 0.0, 40.0, 32.0)))
    assert crop.image_wh == (40, 32)
    assert cache.forwards == 2
    assert not np.allclose(full.activation.numpy().mean(), crop.activation.numpy().mean(), rtol=1e-6)


def test_boxes_giving_the_same_crop_rectangle_share_one_file(tmp_path: Path, backbone) -> None:
    path = _images(tmp_path / "imgs", 1)[0]  # 64 x 64
    cache = ActivationCache(tmp_path / "cache", backbone, 64)
    sha = cache.file_for(ImageRequest(path)).stem
    # rounded outward to whole pixels and clipped to the image: all (10, 5, 51, 64)
    boxes = [(10.2, 5.7, 50.1, 63.5), (10.9, 5.0, 51.0, 64.0), (10.0, 5.99, 50.01, 80.0)]
    files = {cache.file_for(ImageRequest(path, b)) for b in boxes}
    assert [f.name for f in files] == [f"{sha}-crop-10_5_51_64.npz"]
    assert cache.ensure([ImageRequest(path, b) for b in boxes], progress=False) == 1
    assert cache.load(ImageRequest(path, boxes[2])).image_wh == (41, 59)
    assert cache.forwards == 1
    # one pixel more is another rectangle, another file
    assert cache.file_for(ImageRequest(path, (9.9, 5.7, 50.1, 63.5))).name == f"{sha}-crop-9_5_51_64.npz"
    # a file under the former key (the box to 0.01 px) is never taken for a crop: it is recomputed
    old = ActivationCache(tmp_path / "old", backbone, 64)
    box = (10.0, 5.0, 51.0, 64.0)
    old.ensure([ImageRequest(path, box)], progress=False)
    old.file_for(ImageRequest(path, box)).rename(
        old.directory / sha[:2] / f"{sha}-crop-10.00_5.00_51.00_64.00.npz"
    )
    assert old.ensure([ImageRequest(path, box)], progress=False) == 1


def test_bad_settings_and_boxes_are_rejected(tmp_path: Path, backbone) -> None:
    with pytest.raises(ValueError, match="dtype"):
        ActivationCache(tmp_path, backbone, 64, "int8")
    with pytest.raises(ValueError, match="does not overlap"):
        crop_image(pattern_image("rings", 0, 32), (40, 40, 50, 50))
