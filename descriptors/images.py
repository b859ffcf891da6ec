"""Safe image decoding shared by the indexer, the searcher and the evaluation harness.

Every way an image can be bad ends in one `ImageDecodeError` whose `.reason` is a short code
(counted in the indexer's summary, mapped to INVALID_ARGUMENT by the searcher) and whose message
says what to do about it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp"})

# 64 megapixels: above any camera in common use, far below what would exhaust memory when
# decoded (64e6 * 3 bytes = 192 MB). Beyond it a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 64_000_000

# a JPEG decoded at a reduced scale keeps at least this many times the size it will be resized
# to: the final resize then still averages >= 2 source pixels per output pixel, as from the full
# image (measured: with a margin of 1, Paris mAP moved by up to 0.6; with 2 the Paris and
# Tiny-ImageNet images, <= 1024 px, decode in full and every number in docs/results.md stands)
DRAFT_MARGIN = 2

# torchvision 0.29 warns on every decode that its image decoding is deprecated (see _jpeg_pixels)
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)

# where decode_image records the full-resolution size of an image it decoded at a reduced scale
FULL_SIZE_KEY = "dffsearch.full_size"

REASONS = ("empty", "not-an-image", "truncated", "too-large", "too-small", "unreadable")


class ImageDecodeError(ValueError):
    """An image that cannot be used; `.reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def full_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the image at full resolution, EXIF orientation applied: the image's
    own size unless ``decode_image`` decoded a JPEG at a reduced scale (``reduce_to``). Boxes sent
    by users and stored in catalogs are in these pixels."""
    return tuple(img.info.get(FULL_SIZE_KEY, img.size))


class RGBPixels:
    """A decoded RGB image as an ``(H, W, 3)`` uint8 array, with the part of PIL's Image API the
    encoders use (``size``, ``width``, ``height``, ``mode``, ``info``, ``crop``, ``np.asarray``).

    Why: ``decode_image(..., pixels=True)`` (after `enable_array_decoder`) decodes a JPEG straight
    into an array (torchvision's libjpeg-turbo decoder) where PIL decodes into its own 4-byte
    pixels that ``np.asarray`` then packs into a new buffer: 7.5-8.4 vs 9.7-11.6 ms per 1024 x 768
    Paris photo, decode + resize, the same pixel values (tests/descriptors/test_images.py)."""

    mode = "RGB"

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.info: dict = {}  # as PIL's: full_size and crop_to_box read and edit it

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]

    @property
    def width(self) -> int:
        return self.array.shape[1]

    @property
    def height(self) -> int:
        return self.array.shape[0]

    def crop(self, rect: Sequence[int]) -> RGBPixels:
        """``rect`` = integer ``(x0, y0, x1, y1)`` inside the image (``crop_rect``): a view."""
        x0, y0, x1, y1 = (int(v) for v in rect)
        return RGBPixels(self.array[y0:y1, x0:x1])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)


_array_decoder: list = []  # [torchvision.io] once enable_array_decoder() succeeded

# a job of at least this many images enables the array decoder (`array_decoder_pays`): it saves
# 1.2 (800 x 600) to 2.1 (1024 x 768 Paris) ms of CPU per image against torchvision's ~2.2 s
# import, so it pays from ~1,000-1,800 images on
ARRAY_DECODER_MIN_IMAGES = 2000


def array_decoder_pays(images: float) -> bool:
    """Whether a job of ``images`` images should `enable_array_decoder` (the import's cost back)."""
    return images >= ARRAY_DECODER_MIN_IMAGES


def enable_array_decoder() -> bool:
    """Let ``decode_image(pixels=True)`` use torchvision's JPEG decoder; False where it is missing.

    Opt-in, for long-running programs (dff-serve calls it at start-up) and long jobs (`dff-index
    build` / `add` of `array_decoder_pays` images, per process): importing torchvision costs ~2.2 s
    of CPU per process on the 2-core machine (it imports its models and ops), more than the decoder
    saves on a small `dff-index add`. torchvision 0.29 deprecates its image
    decoding in favour of TorchCodec; if it goes, PIL's path stays."""
    if not _array_decoder:
        try:
            import torchvision.io
        except ImportError:
            return False
        _array_decoder.append(torchvision.io)
    return True


def _jpeg_pixels(data: bytes) -> np.ndarray | None:
    """A colour JPEG decoded into ``(H, W, 3)`` uint8, EXIF orientation applied, by torchvision;
    None when not enabled (`enable_array_decoder`) or when it refuses the data (PIL then decodes
    it and reports)."""
    if not _array_decoder:
        return None
    import torch

    io_module = _array_decoder[0]
    ImageReadMode, decode_jpeg = io_module.ImageReadMode, io_module.decode_jpeg
    try:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError):  # damaged or truncated: PIL's error says which
        return None
    return decoded.permute(1, 2, 0).numpy()  # torchvision's (3, H, W) is a view of an (H, W, 3) buffer


def _draft_for(img: Image.Image, reduce_to: int, region: Sequence[float] | None) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the region's (default: the image's)
    shorter side stays at least ``DRAFT_MARGIN * reduce_to`` pixels: a 60 MP photo for a 320 px
    backbone is then decoded at 1/8 (~1 MP, 3 MB) instead of in full (180 MB)."""
    width, height = img.size
    shorter = min(width, height)
    if region is not None and len(region) == 4:
        x0, y0, x1, y1 = (float(v) for v in region)
        if all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0:
            # the region is in oriented pixels; its shorter side does not depend on the rotation
            shorter = min(shorter, max(1.0, min(x1 - x0, y1 - y0)))
    scale = DRAFT_MARGIN * reduce_to / shorter
    if scale < 1.0:
        img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))


def decode_image(
    data: bytes | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 8,
    *,
    reduce_to: int | None = None,
    region: Sequence[float] | None = None,
    pixels: bool = False,
) -> Image.Image | RGBPixels:
    """Decode bytes or a file into a fully loaded RGB image, EXIF orientation applied.

    Raises `ImageDecodeError` for empty input, data that is not an image, truncated files,
    images with more than `max_pixels` pixels (checked from the header, before decoding) and
    images whose smaller side is below `min_side` (too small to give a feature map).

    ``reduce_to``: the caller will resize the image (or ``region`` of it, a box in full-resolution
    pixels) to this size on its shorter side, so a JPEG may be decoded at a reduced scale
    (``Image.draft``) that keeps at least ``DRAFT_MARGIN`` times that (or its full size);
    ``full_size(img)`` then gives the full-resolution size.

    ``pixels``: the caller only reads the pixels (the backbone's input): once the program called
    `enable_array_decoder`, a colour JPEG decoded at full scale comes back as `RGBPixels` (same
    values, no PIL image in between); anything else as a PIL image.
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
            if reduce_to is not None and img.format == "JPEG":
                _draft_for(img, int(reduce_to), region)
            stored_size = img.size
            if pixels and img.format == "JPEG" and img.mode == "RGB" and stored_size == (width, height):
                array = _jpeg_pixels(data)
                if array is not None:
                    pixels_image = RGBPixels(array)
                    _check_min_side(pixels_image.size, min_side, label)
                    return pixels_image
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
    # a broken EXIF block should not make a good image unusable. In place, and no convert of an
    # RGB image: each was a full copy of the pixels (~3 ms apiece for a 1024 x 768 photo).
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)
    if img.mode != "RGB":
        img = img.convert("RGB")
    rotated = img.size != stored_size and img.size == stored_size[::-1]
    full = (height, width) if rotated else (width, height)
    _check_min_side(full, min_side, label)
    if img.size != full:
        img.info[FULL_SIZE_KEY] = full
    else:
        img.info.pop(FULL_SIZE_KEY, None)
    return img


def _check_min_side(full: tuple[int, int], min_side: int, label: str) -> None:
    """The "too-small" refusal, on the (oriented) full-resolution size."""
    if min(full) < min_side:
        raise ImageDecodeError(
            "too-small",
            f"{label}: {full[0]}x{full[1]} is too small; both sides must be >= {min_side} px",
        )


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
