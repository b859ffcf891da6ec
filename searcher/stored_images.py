"""GetImage: the stored image of an indexed id, for the engine and the Ray Serve ingress alike.

Only ids the catalog marks indexed are served, and the file's path comes from the catalog, never
from the caller: nothing else on disk is reachable through it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from descriptors.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

from .errors import SearchEngineError

CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class ImageNotFoundError(SearchEngineError, LookupError):
    """GetImage of an id that is not (or no longer) in the index, or whose file is gone."""


@dataclass
class StoredImage:
    id: int
    data: bytes
    content_type: str
    width: int  # of the indexed image (EXIF orientation applied), also when `data` is shrunk
    height: int
    path: str
    key: str = ""


def indexed_image_path(catalog, image_id: int, source_root: str, index_dir: str | Path) -> str:
    """The absolute path of an id the catalog marks indexed; ImageNotFoundError otherwise."""
    from indexer.files import resolve_catalog_path

    row = catalog.by_ids([int(image_id)]).get(int(image_id)) if int(image_id) >= 0 else None
    if row is None or not row.indexed:
        raise ImageNotFoundError(f"image id {image_id} is not in the index")
    return resolve_catalog_path(row.path, source_root, index_dir)


def load_stored_image(
    image_id: int, path: str, max_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, key: str = ""
) -> StoredImage:
    """The file as it is (max_side 0, when browsers show its format) or a JPEG whose longer side is
    at most `max_side`."""
    from PIL import Image

    try:
        data = Path(path).read_bytes()
        img = decode_image(data, max_pixels=max_pixels, min_side=1)
        with Image.open(io.BytesIO(data)) as header:
            content_type = CONTENT_TYPES.get(header.format or "")
    except (OSError, ImageDecodeError) as exc:
        raise ImageNotFoundError(f"image id {image_id}: its file cannot be read ({exc})") from exc
    width, height = img.size
    if max_side > 0 or content_type is None:  # shrunk, or a format browsers may not show
        img.thumbnail((max(1, int(max_side or max(width, height))),) * 2)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85)
        data, content_type = buffer.getvalue(), "image/jpeg"
    return StoredImage(int(image_id), data, content_type, width, height, str(path), key)
