"""What decides a descriptor, importable without torch: `DescriptorConfig` and the names of the
registries whose implementations need torch (descriptor methods, NMF solvers, runtimes).

A process that only checks or records settings -- the driver of `dff-index build --ray`, which
must not spend seconds importing torch while its workers start, config validation, CLI choices --
imports this module; the registries (descriptors.pipeline.METHODS, descriptors.nmf.SOLVERS,
descriptors.runtimes.RUNTIMES) assert at import that their names match these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

METHOD_NAMES = ("mac", "spoc", "gem", "crow", "rmac", "nmf-v", "nmf-vu")
NMF_METHODS = frozenset({"nmf-v", "nmf-vu"})
ALGORITHMS = ("hals", "mu")
# NMF solver name -> the algorithm it runs (descriptors.nmf.SOLVERS)
SOLVER_ALGORITHMS = {
    "numba-hals": "hals", "torch-hals": "hals", "numba-mu": "mu", "torch-sparse": "mu", "torch-dense": "mu",
}
RUNTIME_NAMES = ("torch", "onnxruntime", "openvino")
# backbone name -> its default smaller image side for retrieval (descriptors.backbones.BACKBONES);
# `timm:NAME` / `torchvision:NAME` (descriptors.named_backbones) get NAMED_RETRIEVAL_IMAGE_SIZE
RETRIEVAL_IMAGE_SIZES = {"efficientnet-lite0": 320, "vgg16": 512, "resnet50": 512}
NAMED_LIBRARIES = ("timm", "torchvision")
NAMED_RETRIEVAL_IMAGE_SIZE = 320


def is_named(name: str) -> bool:
    """True for `timm:NAME` / `torchvision:NAME` (a library prefix and a non-empty name)."""
    library, sep, model = name.partition(":")
    return bool(sep) and library in NAMED_LIBRARIES and bool(model)


def retrieval_image_size(name: str) -> int:
    """The registry's default smaller image side for instance retrieval with backbone `name`
    (no weights are loaded); `timm:NAME` / `torchvision:NAME`: 320 (descriptors.named_backbones)."""
    if is_named(name):
        return NAMED_RETRIEVAL_IMAGE_SIZE
    if name not in RETRIEVAL_IMAGE_SIZES:
        raise KeyError(
            f"unknown backbone {name!r}; choose one of {', '.join(sorted(RETRIEVAL_IMAGE_SIZES))}, "
            "or timm:NAME / torchvision:NAME"
        )
    return RETRIEVAL_IMAGE_SIZES[name]


def image_size_or_default(name: str, image_size: int | None) -> int:
    """`image_size`, or backbone `name`'s `retrieval_image_size` when it is None (a config's
    default); an unknown backbone is then a ValueError naming the known ones."""
    if image_size is not None:
        return image_size
    try:
        return retrieval_image_size(name)
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def algorithm_of(solver: str | None, default: str = "mu") -> str:
    """The algorithm a ``--nmf-solver`` choice runs (``auto``/None: ``default``)."""
    if solver in (None, "auto"):
        return default
    if solver not in SOLVER_ALGORITHMS:
        raise ValueError(f"unknown NMF solver {solver!r}; choose auto or one of {', '.join(SOLVER_ALGORITHMS)}")
    return SOLVER_ALGORITHMS[solver]


@dataclass
class DescriptorConfig:
    """Everything that decides a descriptor (the index manifest records it)."""

    method: str = "nmf-vu"
    # NMF rank: 4 as in the thesis's figures; the ablation (docs/results.md) found it best on
    # full-image queries, on par with 8 on box queries, at about half the NMF cost of 8
    k: int = 4
    max_iter: int = 100
    tol: float = 1e-4
    seed: int = 0
    crow_weighting: bool = True
    # the NMF's updates (descriptors.nmf.ALGORITHMS): "mu" (Lee-Seung multiplicative updates, the
    # method's) or "hals" (the same error in 2-3x fewer iterations, but sparser heatmaps that cost
    # V·U 6 points of landmark-LOO mAP: an option, see docs/results.md "Speed choices")
    nmf_algorithm: str = "mu"
    # V·U Gaussian: sigma = gaussian_sigma_of_grid x the feature grid's shorter side (scale-free;
    # docs/results.md ablation: 0.5 beat the design's fixed kernel on every protocol). None: the
    # design's fixed gaussian_size x gaussian_size kernel of gaussian_variance (older indexes).
    gaussian_sigma_of_grid: float | None = 0.5
    gaussian_size: int = 13
    gaussian_variance: float = 2.0
    box_threshold: float = 0.75
    rmac_levels: int = 3
    gem_p: float = 3.0

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ValueError(f"unknown descriptor method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        for name in ("k", "max_iter", "gaussian_size", "rmac_levels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DescriptorConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"DescriptorConfig.seed must be a non-negative int, got {self.seed!r}")
        if self.gaussian_size % 2 == 0:
            raise ValueError(f"DescriptorConfig.gaussian_size must be odd, got {self.gaussian_size}")
        if not (isinstance(self.tol, int | float) and math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"DescriptorConfig.tol must be a finite number >= 0, got {self.tol!r}")
        if not (isinstance(self.gaussian_variance, int | float) and self.gaussian_variance > 0):
            raise ValueError(
                f"DescriptorConfig.gaussian_variance must be > 0, got {self.gaussian_variance!r}"
            )
        if self.gaussian_sigma_of_grid is not None and not (
            isinstance(self.gaussian_sigma_of_grid, int | float)
            and not isinstance(self.gaussian_sigma_of_grid, bool)
            and math.isfinite(self.gaussian_sigma_of_grid)
            and self.gaussian_sigma_of_grid > 0
        ):
            raise ValueError(
                f"DescriptorConfig.gaussian_sigma_of_grid must be None or a finite number > 0, "
                f"got {self.gaussian_sigma_of_grid!r}"
            )
        if not (isinstance(self.box_threshold, int | float) and 0.0 <= self.box_threshold <= 1.0):
            raise ValueError(f"DescriptorConfig.box_threshold must be in [0, 1], got {self.box_threshold!r}")
        if not (isinstance(self.gem_p, int | float) and math.isfinite(self.gem_p) and self.gem_p > 0):
            raise ValueError(f"DescriptorConfig.gem_p must be a finite number > 0, got {self.gem_p!r}")
        if self.nmf_algorithm not in ALGORITHMS:
            raise ValueError(
                f"DescriptorConfig.nmf_algorithm must be one of {', '.join(ALGORITHMS)}, got {self.nmf_algorithm!r}"
            )
        if not isinstance(self.crow_weighting, bool):
            raise ValueError(f"DescriptorConfig.crow_weighting must be a bool, got {self.crow_weighting!r}")

    @property
    def uses_nmf(self) -> bool:
        return self.method in NMF_METHODS

    def vu_gaussian(self, grid_hw: tuple[int, int]) -> tuple[int, float]:
        """``(size, variance)`` of the V·U Gaussian on a feature grid of ``grid_hw`` cells."""
        if self.gaussian_sigma_of_grid is None:
            return self.gaussian_size, float(self.gaussian_variance)
        from .factorized import gaussian_for_grid

        return gaussian_for_grid(grid_hw, self.gaussian_sigma_of_grid)
