"""The one configuration dataclass of `dff-eval` (every CLI flag lands here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from descriptors.pipeline import METHODS

ALL_METHODS = tuple(METHODS)  # mac spoc gem rmac crow nmf-v nmf-vu


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dffsearch" / "activations"


@dataclass
class EvalConfig:
    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    device: str = "cpu"
    # instance retrieval; None = the backbone's default (efficientnet-lite0: 320). dff-eval's
    # semantic retrieval and localization default to 224
    image_size: int | None = None
    methods: tuple[str, ...] = ALL_METHODS
    qe: tuple[int, ...] = (0,)
    whiten_on: Path | None = None
    whiten_dim: int | None = None
    protocol: str = "standard"
    at: int = 30
    k: int = 4
    # the backbone runtime (descriptors.runtimes); torch by default so that cached activations
    # and published numbers stay comparable; another runtime gets its own activation cache
    runtime: str = "torch"
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_dtype: str = "float16"
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
            )
        if any(n < 0 for n in self.qe):
            raise ValueError(f"query-expansion sizes must be >= 0, got {self.qe}")
        if self.at < 1:
            raise ValueError(f"--at must be >= 1, got {self.at}")
        from descriptors.backbones import image_size_or_default

        self.image_size = image_size_or_default(self.backbone, self.image_size)
        from descriptors.runtimes import resolve_runtime

        self.runtime = resolve_runtime(self.runtime, self.device)
        if self.image_size < 32:
            raise ValueError(f"--image-size must be >= 32, got {self.image_size}")
        if self.whiten_on is not None and not Path(self.whiten_on).is_dir():
            raise ValueError(f"--whiten-on {self.whiten_on} is not a folder of images")
