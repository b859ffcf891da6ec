"""Real photos that scikit-image ships (no network): the demo's, benchmarks' and tests' sample images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def sample_photo(name: str, max_side: int | None = None) -> Image.Image:
    """scikit-image's sample `name` (a `skimage.data` function) as an RGB PIL image.

    Greyscale samples are repeated over three channels, an alpha channel is dropped, and of a
    stereo pair (`stereo_motorcycle`) the left view is taken. With `max_side` the image is
    shrunk (aspect kept, never enlarged) so that its longer side is at most `max_side`.
    """
    import skimage.data

    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):
        array = array[0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    image = Image.fromarray(array[..., :3].astype(np.uint8))
    if max_side is not None:
        image.thumbnail((max_side, max_side))
    return image


def write_sample_photos(
    folder: str | Path, names: Iterable[str], quality: int = 92, overwrite: bool = True
) -> list[Path]:
    """Write each sample as `<folder>/<name>.jpg` (JPEG `quality`); returns the paths in `names` order.

    With `overwrite=False` a file that already exists is kept (a cache folder filled once).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        target = folder / f"{name}.jpg"
        if overwrite or not target.exists():
            sample_photo(name).save(target, quality=quality)
        paths.append(target)
    return paths
