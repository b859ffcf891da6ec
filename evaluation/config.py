"""The one configuration dataclass of `dff-eval` (every CLI flag lands here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from descriptors.pipeline import METHODS
from descriptors.rerank import DEFAULT_DEPTH

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
    # re-ranking depths (descriptors.rerank; 0: off) and the rows' compressed dimension (0: none).
    # The default is dff-serve's (descriptors.rerank.DEFAULT_DEPTH): dff-eval scores what the product serves.
    rerank: tuple[int, ...] = (DEFAULT_DEPTH,)
    rerank_dim: int = 256
    # query expansions measured for every QE size > 0 (evaluation.encode.EXPANSIONS)
    expansion: tuple[str, ...] = ("average",)
    # sweeps: every method is evaluated at each image size x K (empty: image_size / k only)
    image_sizes: tuple[int, ...] = ()
    ks: tuple[int, ...] = ()
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
        if any(n < 0 for n in self.rerank) or not self.rerank:
            raise ValueError(f"--rerank depths must be >= 0 (0: off), got {self.rerank}")
        if self.rerank_dim < 0:
            raise ValueError(f"--rerank-dim must be >= 0 (0: uncompressed rows), got {self.rerank_dim}")
        from evaluation.encode import EXPANSIONS

        bad = [e for e in self.expansion if e not in EXPANSIONS]
        if bad or not self.expansion:
            raise ValueError(f"unknown --expansion {', '.join(bad) or '(none)'}; choose from {', '.join(EXPANSIONS)}")
        if any(k < 1 for k in (self.k, *self.ks)):
            raise ValueError(f"--k must be >= 1, got {(self.k, *self.ks)}")
        if any(size < 32 for size in self.image_sizes):
            raise ValueError(f"--image-size must be >= 32, got {self.image_sizes}")
        if self.at < 1:
            raise ValueError(f"--at must be >= 1, got {self.at}")
        from descriptors.settings import image_size_or_default

        self.image_size = image_size_or_default(self.backbone, self.image_size)
        from descriptors.runtimes import resolve_runtime

        self.runtime = resolve_runtime(self.runtime, self.device)
        if self.image_size < 32:
            raise ValueError(f"--image-size must be >= 32, got {self.image_size}")
        if self.whiten_on is not None and not Path(self.whiten_on).is_dir():
            raise ValueError(f"--whiten-on {self.whiten_on} is not a folder of images")

    def sweep_sizes(self) -> tuple[int, ...]:
        return self.image_sizes or (self.image_size,)

    def sweep_ks(self) -> tuple[int, ...]:
        return self.ks or (self.k,)
