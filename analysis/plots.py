"""The commands' figures (matplotlib, Agg backend, imported where used)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .report import pyplot

__all__ = ["concept_sheet", "coupled_figure", "filters_figure", "mp_figure", "rank_figure", "spectra_figure"]

CONCEPT_COLOURS = np.array(
    [
        [0.90, 0.10, 0.10], [0.10, 0.45, 0.95], [0.10, 0.75, 0.20], [1.00, 0.75, 0.00],
        [0.75, 0.20, 0.85], [0.00, 0.80, 0.80], [1.00, 0.45, 0.00], [0.55, 0.35, 0.15],
    ]
)


def concept_colour(k: int) -> np.ndarray:
    if k < len(CONCEPT_COLOURS):
        return CONCEPT_COLOURS[k]
    import matplotlib

    return np.asarray(matplotlib.colormaps["tab20"](k % 20)[:3])


def _overlay(image: np.ndarray, heatmaps: torch.Tensor, peaks: torch.Tensor) -> np.ndarray:
    """RGB image in [0, 1] with each concept's heatmap painted in its colour (alpha = share of the
    concept's maximum over the set)."""
    h, w = image.shape[:2]
    up = F.interpolate(heatmaps[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    alpha = (up / peaks.clamp_min(1e-12)[:, None, None]).clamp(0, 1).numpy()  # (K, h, w)
    out = image * 0.45  # dimmed photo under the concepts
    for k in range(alpha.shape[0]):
        a = 0.85 * alpha[k][..., None]
        out = out * (1 - a) + concept_colour(k) * a
    return np.clip(out, 0, 1)


def concept_sheet(images: Sequence[np.ndarray], heatmaps, strengths: np.ndarray, titles: Sequence[str]):
    """Every image with its K concept overlays in K colours, and a legend (colour, mean share)."""
    plt = pyplot()
    from matplotlib.patches import Patch

    n, k = len(images), strengths.shape[1]
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows + 0.6), squeeze=False)
    peaks = torch.stack([h.flatten(1).amax(dim=1) for h in heatmaps]).amax(dim=0)
    for index, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if index < n:
            ax.imshow(_overlay(images[index], heatmaps[index], peaks))
            ax.set_title(titles[index], fontsize=8)
    mean_share = strengths.mean(axis=0)
    handles = [Patch(color=concept_colour(j), label=f"concept {j} ({100 * mean_share[j]:.0f}%)") for j in range(k)]
    fig.legend(handles=handles, loc="lower center", ncol=min(k, 6), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.12)
    return fig


def rank_figure(curves: dict[str, dict[str, dict]], title: str):
    """``curves[label][layer] = {"k": [...], "rel_error": [...]}``; one colour per layer, one line
    style per label (trained solid, random dashed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    layers = list(next(iter(curves.values())).keys())
    cmap = plt.get_cmap("viridis")
    for s, (label, per_layer) in enumerate(curves.items()):
        for i, name in enumerate(layers):
            curve = per_layer[name]
            colour = cmap(i / max(1, len(layers) - 1))
            ax.plot(curve["k"], curve["rel_error"], styles[s % 4], marker="o", ms=3, color=colour,
                    label=f"{name} ({label})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NMF rank K")
    ax.set_ylabel("relative error ||X - UV|| / ||X||")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def coupled_figure(runs: Sequence[dict]):
    """RMSE vs rank per training fraction (mean over seeds, band = min..max), and the normalized
    top singular values of each layer's activations (mean over seeds)."""
    plt = pyplot()
    layers = list(runs[0]["singular_values"].keys())
    fig, axes = plt.subplots(1, 1 + len(layers), figsize=(4 * (1 + len(layers)), 3.6))
    cmap = plt.get_cmap("plasma")
    fractions = sorted({run["train_fraction"] for run in runs})
    for f_index, fraction in enumerate(fractions):
        group = [run for run in runs if run["train_fraction"] == fraction]
        colour = cmap(0.85 * f_index / max(1, len(fractions) - 1))
        rmse = np.array([run["rmse"] for run in group])
        accuracy = np.mean([run["test_accuracy"] for run in group])
        seeds = f", {len(group)} seeds" if len(group) > 1 else ""
        label = f"{100 * fraction:.0f}% (acc {100 * accuracy:.1f}%{seeds})"
        axes[0].plot(group[0]["ranks"], rmse.mean(axis=0), marker="o", ms=3, color=colour, label=label)
        if len(group) > 1:
            axes[0].fill_between(group[0]["ranks"], rmse.min(axis=0), rmse.max(axis=0), color=colour, alpha=0.2)
        for ax, name in zip(axes[1:], layers, strict=True):
            values = np.array([np.asarray(run["singular_values"][name]) / run["singular_values"][name][0] for run in group])
            ax.semilogy(np.arange(1, values.shape[1] + 1), values.mean(axis=0), color=colour, marker=".", ms=3)
            ax.set_title(f"{name}: top singular values / s1", fontsize=9)
    axes[0].set_xlabel("rank K")
    axes[0].set_ylabel("RMSE (blocks at unit RMS)")
    axes[0].set_title("coupled NMF over the test set", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def spectra_figure(names: Sequence[str], spectra: Sequence[np.ndarray], definition: str):
    """Every layer's singular values divided by its largest, coloured by depth."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, values in enumerate(spectra):
        values = np.asarray(values)
        ax.loglog(np.arange(1, len(values) + 1), values / values[0], color=cmap(i / max(1, len(spectra) - 1)),
                  lw=0.8)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(spectra) - 1))
    fig.colorbar(sm, ax=ax, label="conv layer (depth order)")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value / largest")
    ax.set_title(f"conv weight spectra ({definition} definition), {len(names)} layers", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def mp_figure(items: Sequence[tuple[str, np.ndarray, np.ndarray, dict, float, float]]):
    """Per layer: the eigenvalue histogram of W W^T / N, the random tensor's, and the MP density."""
    plt = pyplot()
    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    for ax, (name, eig, random_eig, fit, ks, random_ks) in zip(axes.ravel(), items, strict=False):
        q, s2 = fit["q"], fit["sigma2"]
        low, high = s2 * (1 - np.sqrt(q)) ** 2, s2 * (1 + np.sqrt(q)) ** 2
        top = max(float(np.max(eig)), high) * 1.02
        bins = np.linspace(0, top, 60)
        ax.hist(eig, bins=bins, density=True, alpha=0.6, label=f"weights (KS {ks:.2f})")
        ax.hist(random_eig, bins=bins, density=True, histtype="step", color="k", label=f"random (KS {random_ks:.2f})")
        x = np.linspace(max(low, 1e-12), high, 400)
        ax.plot(x, np.sqrt(np.clip((high - x) * (x - low), 0, None)) / (2 * np.pi * s2 * q * x), "r", lw=1, label="MP")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6)
    return fig


def filters_figure(layers: Sequence[tuple[str, np.ndarray]]):
    """Top right singular vectors of the reshaped weight as filters: RGB for 3-channel inputs,
    otherwise the energy (sum over input channels of v^2) of each kernel position."""
    plt = pyplot()
    n_top = max(len(f) for _, f in layers)
    fig, axes = plt.subplots(len(layers), n_top, figsize=(1.2 * n_top, 1.4 * len(layers)), squeeze=False)
    for row, (name, filters) in enumerate(layers):
        for col in range(n_top):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(filters):
                ax.axis("off")
                continue
            v = filters[col]
            if v.shape[0] == 3:
                image = np.transpose(v, (1, 2, 0))
                image = 0.5 + image / (2 * max(np.abs(image).max(), 1e-12))
                ax.imshow(image, interpolation="nearest")
            else:
                ax.imshow(np.square(v).sum(axis=0), cmap="magma", interpolation="nearest")
            if col == 0:
                ax.set_ylabel(name, fontsize=6, rotation=0, ha="right")
            ax.set_title(f"v{col + 1}", fontsize=6)
    return fig
