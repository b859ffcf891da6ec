"""Writing the commands' outputs: every PNG, JSON and NPZ through the indexer's atomic writer,
so an interrupted run leaves either the previous file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.storage import atomic_write, atomic_write_json

__all__ = ["output_folder", "save_figure", "save_json", "save_npz"]


def output_folder(out: str | Path) -> Path:
    """``out`` created if missing; a clear error when it is a file or cannot be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from exc
    return out


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return Path(path)


def save_json(path: str | Path, obj: object) -> Path:
    atomic_write_json(path, obj)
    return Path(path)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)
    return Path(path)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported where used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
