"""`dff-query --show`: a matplotlib figure of a search.

Top row: the query with its box, and (for a search with localization) the query's NMF heatmap
(the averaged heatmap of the factors kept inside the box, or of all factors) over it. Below: the top results, each with its score, its predicted box and
its heatmap. Result images are read from their catalog paths when this machine can see them;
otherwise the panel shows the heatmap alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from dffsearch.v1 import search_pb2


def _heatmap_array(message: search_pb2.Heatmap) -> np.ndarray | None:
    if message.height == 0 or message.width == 0:
        return None
    return np.asarray(message.values, dtype=np.float32).reshape(message.height, message.width)


def _load(path: str | Path):
    """The image as the server saw it (EXIF orientation applied), so boxes and heatmaps line up."""
    from descriptors.images import ImageDecodeError, decode_image

    try:
        return decode_image(path)
    except ImageDecodeError:
        return None


def _draw_box(ax, box: Sequence[float], color: str) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=2.5))


def _overlay(ax, image, heatmap: np.ndarray | None, size: tuple[int, int]) -> None:
    width, height = size
    if image is not None:
        ax.imshow(image)
    if heatmap is not None:
        ax.imshow(
            heatmap,
            cmap="jet",
            alpha=0.45 if image is not None else 1.0,
            extent=(0, width, height, 0),
            interpolation="bilinear",
        )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)


def heatmap_title(response: search_pb2.SearchResponse, query_box: Sequence[float] | None) -> str:
    """The title of the query's heatmap panel: what the panel really shows."""
    if not response.HasField("query_heatmap"):
        return "no heatmap (query with --localize)"
    factors = response.query_factors
    where = "in the box" if query_box is not None else "of the image"
    return f"NMF heatmap ({factors} factor{'s' if factors != 1 else ''} {where})"


def draw_results(
    query_path: str | Path,
    query_box: Sequence[float] | None,
    response: search_pb2.SearchResponse,
    out: str | Path,
    max_results: int = 8,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    query = _load(query_path)
    size = query.size if query is not None else (response.query_width, response.query_height)
    results = list(response.results)[:max_results]
    columns = max(2, min(4, len(results)))
    rows = 1 + (len(results) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    axes[0, 0].imshow(query) if query is not None else None
    if query_box is not None:
        _draw_box(axes[0, 0], query_box, "lime")
    axes[0, 0].set_title("query" + (" + box" if query_box is not None else ""), fontsize=10)
    query_heatmap = _heatmap_array(response.query_heatmap) if response.HasField("query_heatmap") else None
    _overlay(axes[0, 1], query, query_heatmap, size)
    if query_box is not None:
        _draw_box(axes[0, 1], query_box, "lime")
    axes[0, 1].set_title(heatmap_title(response, query_box), fontsize=10)

    for position, result in enumerate(results):
        ax = axes[1 + position // columns, position % columns]
        image = _load(result.path)
        result_size = image.size if image is not None else (result.width or 1, result.height or 1)
        heatmap = _heatmap_array(result.heatmap) if result.HasField("heatmap") else None
        _overlay(ax, image, heatmap, result_size)
        if result.HasField("box"):
            _draw_box(ax, (result.box.x0, result.box.y0, result.box.x1, result.box.y1), "red")
        label = result.key or Path(result.path).name
        note = " (missing)" if result.image_missing else ""
        ax.set_title(f"#{result.rank} {result.score:.3f}{note}\n{label[:28]}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
