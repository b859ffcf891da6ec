"""Safe image decoding shared by the indexer, the searcher and the evaluation harness.

Every way an image can be bad ends in one `ImageDecodeError` whose `.reason` is a short code
(counted in the indexer's summary, mapped to INVALID_ARGUMENT by the searcher) and whose message
says what to do about it.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp"})

# 64 megapixels: above any camera in common use, far below what would exhaust memory when
# decoded (64e6 * 3 bytes = 192 MB). Beyond it a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 64_000_000

REASONS = ("empty", "not-an-image", "truncated", "too-large", "too-small", "unreadable")


class ImageDecodeError(ValueError):
    """An image that cannot be used; `.reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def decode_image(
    data: bytes | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 8,
) -> Image.Image:
    """Decode bytes or a file into a fully loaded RGB image, EXIF orientation applied.

    Raises `ImageDecodeError` for empty input, data that is not an image, truncated files,
    images with more than `max_pixels` pixels (checked from the header, before decoding) and
    images whose smaller side is below `min_side` (too small to give a feature map).
    """
    label = "image"
    if isinstance(data, (str, Path)):
        label = str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise ImageDecodeError("unreadable", f"{label}: cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageDecodeError("empty", f"{label}: empty input (0 bytes); send the file's contents")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too-large",
                    f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                    f"{max_pixels:,} (decompression-bomb guard); downscale the image first",
                )
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too-large", f"{label}: {exc}; downscale the image first") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            "not-an-image",
            f"{label}: not a decodable image ({len(data)} bytes); supported: JPEG, PNG, WebP",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        lowered = text.lower()
        reason = "truncated" if "truncated" in lowered or "broken data stream" in lowered else "not-an-image"
        raise ImageDecodeError(reason, f"{label}: image data is damaged ({text})") from exc
    # a broken EXIF block should not make a good image unusable
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    img = img.convert("RGB")
    if min(img.size) < min_side:
        raise ImageDecodeError(
            "too-small",
            f"{label}: {img.size[0]}x{img.size[1]} is too small; both sides must be >= {min_side} px",
        )
    return img


def iter_image_files(folder: str | Path, exclude: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Recursively yield image files (jpg/jpeg/png/webp, any case) under `folder`, sorted.

    Hidden files and folders (names starting with '.') are skipped, and so are the folders in
    `exclude` (the index being built when it lies inside the collection). Symlinked folders are
    not followed (no cycles); symlinked files are.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    excluded = {os.path.realpath(p) for p in exclude}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in excluded
        )
        for name in filenames:
            if not name.startswith(".") and is_image_path(name):
                found.append(Path(dirpath) / name)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    yield from found
