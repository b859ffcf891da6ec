"""Shared helpers of the web tests: the photos of the index and a query with two objects."""

from __future__ import annotations

import io

from PIL import Image

from descriptors.sample_photos import sample_photo

# real photos shipped with scikit-image (no network); distinct scenes so rank 1 is unambiguous
INDEXED_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins",
    "colorwheel", "hubble_deep_field", "immunohistochemistry", "rocket",
)
IMAGE_SIZE = 160
# the composite query: the coffee photo on the left, the cat (chelsea) on the right
COFFEE_BOX = (0.0, 0.0, 320.0, 213.0)
CAT_BOX = (320.0, 0.0, 640.0, 213.0)


def composite_query() -> Image.Image:
    """Two indexed photos side by side: a box around one of them must rank that one first."""
    canvas = Image.new("RGB", (640, 240), "white")
    canvas.paste(sample_photo("coffee", 320), (0, 0))
    canvas.paste(sample_photo("chelsea", 320), (320, 0))
    return canvas


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
