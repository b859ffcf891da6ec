"""On-disk activation cache: one backbone forward per image, shared by every method and run.

Layout: `<root>/<backbone>-<weights sha256[:16]>-<layer slug>-<image size>-<dtype>-jd2-tr/<ab>/<image sha256>[-crop-<x0>_<y0>_<x1>_<y1>].npz`
(arrays `activation` (C, h, w) and `image_wh`, the decoded image's size before resizing).
The folder name carries everything that changes the activations except the image, and the
file name is the image *content* hash (plus, for the baselines' query crops, the integer crop
rectangle `descriptors.pipeline.crop_rect` gives: the box rounded outward to whole pixels and
clipped to the image, so boxes giving the same crop share one file), so renamed or moved images
hit the cache and edited ones miss it. (Crop files written before the key was the integer
rectangle carry the box to 0.01 px, with decimal points: they are never hit, only recomputed.)
Each file is written to a temporary name and `os.replace`d, so an interrupted run leaves no
partial file and the next run resumes where it stopped.

float16 storage halves the disk and memory; activations are ReLU/ReLU6 outputs, for which
float16's relative error (~5e-4) is far below the effect of the input's JPEG noise (checked
in docs/results.md: identical mAP to 0.1 with float32).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from descriptors.atomic_files import atomic_write
from descriptors.backbones import Backbone, file_sha256
from descriptors.encode import crop_to_box
from descriptors.images import decode_image, full_size
from descriptors.pipeline import crop_rect

Box = tuple[float, float, float, float]
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class ImageRequest:
    """An image file, optionally cropped to `crop` (pixels of the decoded, EXIF-transposed image)."""

    path: Path
    crop: Box | None = None


@dataclass(frozen=True)
class CachedActivation:
    activation: torch.Tensor  # (C, h, w) float32
    image_wh: tuple[int, int]  # size of the (cropped) image the activation was computed from


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def crop_image(img, box: Box):
    """Crop a PIL image to a float box, rounded outward to whole pixels and clipped to the image
    (``descriptors.encode.crop_to_box``: the crop every program forwards for the baselines)."""
    return crop_to_box(img, box)


class ActivationCache:
    """Activations of `backbone` at `image_size`, computed once per image and kept on disk."""

    def __init__(self, root: str | Path, backbone: Backbone, image_size: int, dtype: str = "float16") -> None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.backbone = backbone
        self.image_size = image_size
        self.dtype = dtype
        # "-jd2": JPEGs decoded at a reduced scale keeping 2 x image_size (descriptors.images.DRAFT_MARGIN);
        # "-tr": resized by torch's antialiased bilinear (descriptors.backbones.resized_pixels; PIL's before)
        name = f"{backbone.name}-{backbone.weights_sha256[:16]}-{_slug(backbone.layer)}-{image_size}-{dtype}-jd2-tr"
        if getattr(backbone, "runtime", "torch") != "torch":
            name += f"-{backbone.runtime}"
        self.directory = Path(root) / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sha_by_path: dict[Path, str] = {}
        self._size_by_sha: dict[str, tuple[int, int]] = {}  # decoded sizes, for the crop rectangles
        self.forwards = 0  # backbone forwards done by this object (tests check the sharing)

    def _content_sha(self, path: Path) -> str:
        key = path.resolve()
        if key not in self._sha_by_path:
            self._sha_by_path[key] = file_sha256(path)
        return self._sha_by_path[key]

    def crop_rect(self, request: ImageRequest) -> tuple[int, int, int, int] | None:
        """The integer rectangle `request` is cropped to (None: the full image); the crop's cache key."""
        if request.crop is None:
            return None
        sha = self._content_sha(request.path)
        if sha not in self._size_by_sha:  # the full size of the image as decoded (EXIF-transposed)
            self._size_by_sha[sha] = full_size(decode_image(request.path, reduce_to=self.image_size))
        return crop_rect(request.crop, self._size_by_sha[sha])

    def file_for(self, request: ImageRequest) -> Path:
        sha = self._content_sha(request.path)
        rect = self.crop_rect(request)
        suffix = "" if rect is None else "-crop-" + "_".join(str(v) for v in rect)
        return self.directory / sha[:2] / f"{sha}{suffix}.npz"

    def _compute(self, request: ImageRequest) -> tuple[np.ndarray, tuple[int, int]]:
        # decoded as the searcher and the indexer decode (descriptors.encode.decode_options: a JPEG
        # at the reduced scale that still gives the crop, or the image, image_size pixels)
        img = decode_image(request.path, reduce_to=self.image_size, region=request.crop, pixels=True)
        if request.crop is not None:
            img = crop_image(img, request.crop)
        image_wh = full_size(img)
        tensor = self.backbone.preprocess(img, self.image_size)
        activation = self.backbone.extract([tensor])[0]
        self.forwards += 1
        return activation.cpu().numpy().astype(STORAGE_DTYPES[self.dtype]), image_wh

    @staticmethod
    def _write_atomically(target: Path, activation: np.ndarray, image_wh: tuple[int, int]) -> None:
        def write(temp: str) -> None:
            with open(temp, "wb") as handle:
                np.savez(handle, activation=activation, image_wh=np.asarray(image_wh, dtype=np.int64))

        atomic_write(target, write, suffix=".npz", mkdir=True)

    def ensure(
        self, requests: Sequence[ImageRequest], progress: bool | None = None, label: str = "activations"
    ) -> int:
        """Compute and store the activations of every request not yet cached; returns how many were computed."""
        missing = []
        seen = set()
        for request in requests:
            target = self.file_for(request)
            if target not in seen and not target.is_file():
                missing.append((request, target))
            seen.add(target)
        if not missing:
            return 0
        show = sys.stderr.isatty() if progress is None else progress
        for request, target in tqdm(
            missing, desc=f"{label} ({self.backbone.name}, {self.image_size}px)", disable=not show
        ):
            self._write_atomically(target, *self._compute(request))
        return len(missing)

    def load(self, request: ImageRequest) -> CachedActivation:
        """(C, h, w) float32 activations and the image size; computes and stores them if absent."""
        target = self.file_for(request)
        if not target.is_file():
            self.ensure([request], progress=False)
        try:
            with np.load(target) as data:
                activation, image_wh = data["activation"], data["image_wh"]
        except (OSError, ValueError, KeyError) as exc:  # a file damaged outside our atomic writes
            target.unlink(missing_ok=True)
            raise RuntimeError(f"cache file {target} was unreadable and has been removed; run again") from exc
        return CachedActivation(
            torch.from_numpy(activation.astype(np.float32)), (int(image_wh[0]), int(image_wh[1]))
        )

    def iter_chunks(
        self, requests: Sequence[ImageRequest], chunk: int = 64
    ) -> Iterator[list[CachedActivation]]:
        """Activations in chunks of `chunk` (bounded memory for 10k-image datasets)."""
        for start in range(0, len(requests), chunk):
            yield [self.load(r) for r in requests[start : start + chunk]]
