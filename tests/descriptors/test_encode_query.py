"""descriptors.encode: what the backbone sees for a boxed query, and encode() end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from descriptors.encode import backbone_input, crop_to_box, encode, rows_by_method
from descriptors.pipeline import DescriptorConfig, Extractor


def _image(size=(120, 80)) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def test_baselines_see_the_crop_and_nmf_methods_the_full_image_with_the_box() -> None:
    image = _image()
    seen, box = backbone_input(image, (10.5, 5, 60.2, 70), DescriptorConfig(method="gem"))
    assert seen.size == (51, 65) and box is None  # rounded outward: x 10..61, y 5..70
    assert np.array_equal(np.asarray(seen), np.asarray(image)[5:70, 10:61])
    seen, box = backbone_input(image, (10.5, 5, 60.2, 70), DescriptorConfig(method="nmf-v"))
    assert seen is image and box == (10.5, 5.0, 60.2, 70.0)
    assert backbone_input(image, None, DescriptorConfig(method="mac")) == (image, None)
    for method in ("mac", "nmf-vu"):
        with pytest.raises(ValueError, match="does not overlap"):
            backbone_input(image, (200, 200, 300, 300), DescriptorConfig(method=method))
    assert crop_to_box(image, (0, 0, 999, 999)).size == image.size


def test_a_baseline_given_a_box_after_the_forward_is_an_error() -> None:
    acts = [torch.rand(8, 4, 6)]
    with pytest.raises(ValueError, match="crop the image"):
        rows_by_method(acts, [(60, 40)], [(0, 0, 30, 20)], [DescriptorConfig(method="mac")])


def test_encode_is_the_extractor_rows_aggregated(default_backbone) -> None:
    extractor = Extractor(default_backbone, DescriptorConfig(method="gem"), image_size=64)
    image, box = _image(), (20, 10, 90, 70)
    vector = encode(extractor, image, box)
    (rows,) = extractor.local_rows([image.crop((20, 10, 90, 70))])
    np.testing.assert_allclose(vector, extractor.global_descriptor(rows), atol=1e-6)
    assert vector.dtype == np.float32 and vector.shape == (default_backbone.channels,)
