"""`AnalyzeConfig`: every setting of dff-analyze in one place (the CLI's flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AnalyzeConfig:
    out: Path
    json: Path | None = None  # a copy of the command's JSON (OUT/<command>.json is always written)
    progress: bool = True
    seed: int = 0
    # backbone (concepts, rank, weights)
    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    device: str = "cpu"
    image_size: int | None = None  # None: concepts -> the backbone's retrieval size; rank -> 224
    # NMF (concepts, rank)
    k: int = 4
    max_iter: int = 200
    tol: float = 1e-5
    # concepts
    layer: str | None = None  # None: the backbone's descriptor layer
    crow_weighting: bool = False
    threshold_of_max: float = 0.2
    # rank
    layers: tuple[str, ...] = ()  # () -> analysis.layers.DEFAULT_LAYERS[backbone]
    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    compare_random: bool = False
    max_images: int = 200
    max_rows: int = 20000
    # coupled
    model: str = "digits-cnn"
    data: str = "digits"
    ranks: tuple[int, ...] = (10, 20, 30, 40, 50)
    train_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    epochs: int = 30
    equal_steps: bool = False  # epochs x 1/fraction: every fraction takes the same number of steps
    seeds: tuple[int, ...] = (0,)
    top_singular: int = 20
    # weights
    definition: str = "reshaped"
    fft_size: int = 16
    n_filters: int = 8
    mp_panels: tuple[str, ...] = field(default_factory=tuple)  # () -> six layers spread over the depth
