"""Shared helpers of the searcher tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import io

from PIL import Image

from descriptors.sample_photos import sample_photo

# real photos shipped with scikit-image (no network); distinct scenes so rank 1 is unambiguous
INDEXED_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins",
    "colorwheel", "hubble_deep_field", "immunohistochemistry", "rocket",
)
EXTRA_PHOTO = "retina"  # not in the index: used for AddImages
IMAGE_SIZE = 160


def photo(name: str, max_side: int = 320) -> Image.Image:
    return sample_photo(name, max_side)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
