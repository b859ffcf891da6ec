"""Singular values of convolution weights, and their comparison with random-matrix theory.

Two definitions of "the SVD of a convolution" (a fully connected layer has one matrix; a conv
layer's weight is a 4-D tensor ``(out, in/groups, kh, kw)``):

- ``reshaped``: the ``out x (in/groups * kh * kw)`` matrix, the weight as a map from one input
  patch to one output pixel (what WeightWatcher and DeepDataProfiler analyse). Its right singular
  vectors reshape to ``(in/groups, kh, kw)``: they are filters, shown as images.
- ``fft``: the exact singular values of the convolution as a linear operator on ``n x n``
  inputs with periodic boundary (Sedghi, Gupta & Long, "The singular values of convolutional
  layers", ICLR 2019): the 2-D DFT of the kernel zero-padded to ``n x n`` gives, at each of the
  ``n^2`` frequencies, an ``out x in`` matrix; the operator's singular values are those of all
  these matrices together (per group for grouped convolutions). A stride > 1 subsamples the
  output: the values given are those of the stride-1 operator it subsamples.

Marchenko-Pastur (MP): the eigenvalues of ``W W^T / N`` of a ``p x N`` matrix (p <= N) of iid
entries with variance ``sigma^2`` follow MP with ratio ``q = p / N``. The comparison is always of
the reshaped matrix (the operator's entries are not iid), with ``sigma^2 = mean(W^2)`` (MP's mean
then equals the eigenvalues' mean exactly); its Kolmogorov-Smirnov statistic, ``sup |F_emp - F_MP|``,
is 0 for a perfect fit. A Gaussian tensor of the same shape and ``sigma^2`` gives the reference
value at that shape (small matrices fit MP only roughly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DEFINITIONS",
    "LayerSpectrum",
    "conv_layers",
    "conv_operator_singular_values",
    "explicit_conv_matrix",
    "layer_spectrum",
    "marchenko_pastur_cdf",
    "mp_ks_statistic",
    "reshaped_matrix",
]

DEFINITIONS = ("reshaped", "fft")


def conv_layers(module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` (subclasses included, e.g. timm's Conv2dSame) in definition order."""
    return [(name, sub) for name, sub in module.named_modules() if isinstance(sub, nn.Conv2d)]


def _check_weight(weight: Tensor, groups: int) -> None:
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"expected a conv weight (out, in/groups, kh, kw), got {getattr(weight, 'shape', None)}")
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the {weight.shape[0]} output channels")


def reshaped_matrix(weight: Tensor) -> Tensor:
    """``(out, in/groups, kh, kw)`` -> the ``out x (in/groups * kh * kw)`` matrix (float64)."""
    _check_weight(weight, 1)
    return weight.detach().double().reshape(weight.shape[0], -1)


def conv_operator_singular_values(weight: Tensor, n: int, groups: int = 1) -> Tensor:
    """All singular values (descending, float64) of the periodic convolution with ``weight`` on
    ``n x n`` inputs, from the 2-D FFT of the kernel (Sedghi et al. 2019)."""
    _check_weight(weight, groups)
    out, in_g, kh, kw = weight.shape
    if kh > n or kw > n:
        raise ValueError(f"fft size {n} is smaller than the {kh}x{kw} kernel")
    weight = weight.detach().double()
    out_g = out // groups
    values = []
    if kh == kw == 1:
        # a 1x1 kernel's transform is the same matrix at every frequency: n^2 copies of its values
        for g in range(groups):
            s = torch.linalg.svdvals(weight[g * out_g : (g + 1) * out_g, :, 0, 0])
            values.append(s.repeat(n * n))
    else:
        spectrum = torch.fft.fft2(weight, s=(n, n))  # (out, in_g, n, n) complex
        if out_g == 1 and in_g == 1:  # depthwise: a 1x1 matrix per frequency, its |value|
            values.append(spectrum.abs().flatten())
        else:
            for g in range(groups):
                block = spectrum[g * out_g : (g + 1) * out_g].permute(2, 3, 0, 1)  # (n, n, out_g, in_g)
                values.append(torch.linalg.svdvals(block).flatten())
    return torch.sort(torch.cat(values), descending=True).values


def explicit_conv_matrix(weight: Tensor, n: int, groups: int = 1) -> Tensor:
    """The ``(out*n*n) x (in*n*n)`` matrix of the periodic convolution (cross-correlation, as
    ``nn.Conv2d`` computes it) on ``n x n`` inputs, built column by column: for tests only."""
    _check_weight(weight, groups)
    import torch.nn.functional as F

    _, in_g, kh, kw = weight.shape
    channels = in_g * groups
    basis = torch.eye(channels * n * n, dtype=torch.float64).reshape(-1, channels, n, n)
    padded = F.pad(basis, (kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2), mode="circular")
    columns = F.conv2d(padded, weight.detach().double(), groups=groups)  # (in*n*n, out, n, n)
    return columns.reshape(channels * n * n, -1).transpose(0, 1)


def marchenko_pastur_cdf(x: np.ndarray, q: float, sigma2: float, grid: int = 20001) -> np.ndarray:
    """CDF of the MP law with ratio ``q in (0, 1]`` and variance ``sigma2`` at ``x`` (numerical
    integration of the density on its support)."""
    if not 0 < q <= 1:
        raise ValueError(f"marchenko_pastur_cdf: q must be in (0, 1], got {q!r}")
    low, high = sigma2 * (1 - np.sqrt(q)) ** 2, sigma2 * (1 + np.sqrt(q)) ** 2
    # t in [0, pi] with x = centre - half*cos(t): the density's square-root edges become smooth
    t = np.linspace(0.0, np.pi, grid)
    centre, half = (high + low) / 2, (high - low) / 2
    xs = centre - half * np.cos(t)
    density = np.sqrt(np.clip((high - xs) * (xs - low), 0, None)) / (2 * np.pi * sigma2 * q * xs)
    integrand = density * half * np.sin(t)
    cdf = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(t))])
    cdf /= cdf[-1]
    return np.interp(np.asarray(x, dtype=np.float64), xs, cdf, left=0.0, right=1.0)


def mp_ks_statistic(matrix: Tensor | np.ndarray, sigma2: float | None = None) -> tuple[float, dict]:
    """KS statistic of the eigenvalues of ``W W^T / N`` (``p = min`` side, ``N = max`` side)
    against MP; also the fit's parameters and eigenvalues (for plots)."""
    W = np.asarray(matrix.detach().cpu().double() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
    if W.ndim != 2 or min(W.shape) < 1:
        raise ValueError(f"mp_ks_statistic: expected a non-empty matrix, got shape {W.shape}")
    if W.shape[0] > W.shape[1]:
        W = W.T
    p, N = W.shape
    sigma2 = float(np.mean(W**2)) if sigma2 is None else float(sigma2)
    if not sigma2 > 0:
        raise ValueError("mp_ks_statistic: the matrix is all zeros")
    eigenvalues = np.sort(np.linalg.svd(W, compute_uv=False) ** 2 / N)
    cdf = marchenko_pastur_cdf(eigenvalues, p / N, sigma2)
    ranks = np.arange(1, p + 1)
    statistic = float(max(np.max(ranks / p - cdf), np.max(cdf - (ranks - 1) / p)))
    return statistic, {"q": p / N, "sigma2": sigma2, "eigenvalues": eigenvalues}


@dataclass
class LayerSpectrum:
    name: str
    shape: tuple[int, ...]
    groups: int
    definition: str
    singular_values: np.ndarray  # descending
    mp_ks_statistic: float
    random_mp_ks_statistic: float
    mp_fit: dict
    random_eigenvalues: np.ndarray
    top_filters: np.ndarray  # (n_top, in/groups, kh, kw): right singular vectors of the reshaped matrix

    def to_json(self, top: int | None = None) -> dict:
        values = self.singular_values if top is None else self.singular_values[:top]
        return {
            "name": self.name,
            "shape": list(self.shape),
            "groups": self.groups,
            "definition": self.definition,
            "singular_values": [float(v) for v in values],
            "mp_ks_statistic": self.mp_ks_statistic,
            "random_mp_ks_statistic": self.random_mp_ks_statistic,
            "mp_ratio": self.mp_fit["q"],
            "mp_sigma2": self.mp_fit["sigma2"],
        }


def layer_spectrum(
    name: str, conv: nn.Conv2d, definition: str = "reshaped", fft_size: int = 16, n_top: int = 8, seed: int = 0
) -> LayerSpectrum:
    """The spectrum of one conv layer under ``definition``, its MP fit and a random reference."""
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {', '.join(DEFINITIONS)}, got {definition!r}")
    weight = conv.weight.detach().cpu()
    matrix = reshaped_matrix(weight)
    _, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    if definition == "fft":
        s = conv_operator_singular_values(weight, fft_size, conv.groups)
    statistic, fit = mp_ks_statistic(matrix)
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn(matrix.shape, generator=generator, dtype=torch.float64) * np.sqrt(fit["sigma2"])
    random_statistic, random_fit = mp_ks_statistic(random, fit["sigma2"])
    filters = vh[:n_top].reshape(-1, *weight.shape[1:]).numpy()
    return LayerSpectrum(
        name, tuple(weight.shape), int(conv.groups), definition, s.numpy(), statistic, random_statistic,
        fit, random_fit["eigenvalues"], filters,
    )
