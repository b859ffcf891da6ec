"""Helpers of the indexer tests: folders of small real photos (scikit-image's samples)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image

from descriptors.sample_photos import sample_photo

# photos that ship inside scikit-image (no download)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field", "immunohistochemistry", "horse")


def photo(name: str, max_side: int = 128) -> Image.Image:
    return sample_photo(name, max_side)


def png_bomb_bytes(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims width x height pixels (900 MP) in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    body = zlib.compress(b"\x00" * (width + 1) * 4)  # only 4 rows: the decoder must never get there
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def write_photos(folder: Path, names=PHOTOS, max_side: int = 128) -> list[Path]:
    """Photos as jpg (and one png in a sub-folder with an upper-case extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        if i == 3:
            path = folder / "sub" / f"{name}.PNG"
            path.parent.mkdir(exist_ok=True)
        else:
            path = folder / f"{name}.jpg"
        photo(name, max_side).save(path, quality=92)
        paths.append(path)
    return paths


def write_variants(folder: Path, n: int, size: int = 112) -> list[Path]:
    """`n` distinct small images: crops of the sample photos at different offsets and scales."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [photo(name, 256) for name in PHOTOS]
    paths = []
    for i in range(n):
        base = bases[i % len(bases)]
        step = i // len(bases)
        side = max(64, min(base.size) - 12 * step)
        x0 = (7 * step) % max(1, base.size[0] - side + 1)
        y0 = (5 * step) % max(1, base.size[1] - side + 1)
        crop = base.crop((x0, y0, x0 + side, y0 + side)).resize((size, size))
        path = folder / f"img_{i:03d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


