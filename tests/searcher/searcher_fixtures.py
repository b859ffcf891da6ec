"""Shared helpers of the searcher tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# real photos shipped with scikit-image (no network); distinct scenes so rank 1 is unambiguous
INDEXED_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins",
    "colorwheel", "hubble_deep_field", "immunohistochemistry", "rocket",
)
EXTRA_PHOTO = "retina"  # not in the index: used for AddImages
IMAGE_SIZE = 160


def photo(name: str, max_side: int = 320) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    img = Image.fromarray(array[..., :3].astype(np.uint8))
    img.thumbnail((max_side, max_side))
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
