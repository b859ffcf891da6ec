"""The re-ranking rows stored with an index: each image's factor rows, compressed.

Each image's local rows (K NMF factors; R-MAC: its regions) go through `descriptors.rerank`'s
`row_features` (l2 -> the index's whitening -> l2) and its `RowCodec` (orthonormal projection to
`dim`, float16), fitted once at build time on (a seeded sample of) the collection's rows and
stored as `factor_codec.npy` (the projection, float32 (D, dim)). Per segment, beside its vectors,
two row-aligned arrays (`indexer/generations.py`):

- `factor_rows` float16 `(sum of rows, dim)`: every image's rows, concatenated in id order;
- `factor_rows_offsets` int64 `(n + 1,)`: image `first_id + i` has rows `offsets[i]:offsets[i+1]`.

Bytes per image: rows x dim x 2 + 8 (K = 4, dim = 256: 2,056). They are written in the same
generation as the vectors (add), dropped with them by tombstones (remove), folded by compaction,
and the manifest's `"factor_rows": {"dim": ..., "codec": ...}` says the index has them (absent:
an index built before them or with `--rerank-dim 0`; searches then do not re-rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

FACTOR_CODEC_NAME = "factor_codec.npy"
ROWS, OFFSETS = "factor_rows", "factor_rows_offsets"  # a segment's `files` keys
CODEC_TRAIN_ROWS = 100_000  # rows sampled (seeded) to learn the projection: more adds time, not accuracy


def has_factor_rows(manifest: dict) -> bool:
    return int(manifest.get("factor_rows", {}).get("dim", 0)) > 0


def fit_codec(feature_rows: np.ndarray, dim: int, seed: int = 0):
    """The `RowCodec` of a collection from its `row_features` rows (sampled down to
    `CODEC_TRAIN_ROWS`, seeded): the projection to min(dim, D), the same fit as dff-eval's."""
    from descriptors.rerank import RowCodec

    rows = np.asarray(feature_rows, np.float32)
    if len(rows) > CODEC_TRAIN_ROWS:
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), CODEC_TRAIN_ROWS, replace=False))]
    return RowCodec.fit(rows, min(int(dim), rows.shape[1]))


def encode_rows(rows: np.ndarray, whitening, codec) -> np.ndarray:
    """An image's local rows as stored: `row_features`, projected, float16 (n, dim)."""
    from descriptors.rerank import row_features

    return codec.encode(row_features(rows, whitening))


def pack(encoded: Sequence[np.ndarray], dim: int) -> dict[str, np.ndarray]:
    """Per-image encoded rows -> a segment's two arrays (`ROWS`, `OFFSETS`)."""
    counts = np.array([len(r) for r in encoded], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    stacked = [np.asarray(r, np.float16) for r in encoded if len(r)]
    rows = np.concatenate(stacked) if stacked else np.zeros((0, dim), np.float16)
    return {ROWS: rows, OFFSETS: offsets}


def codec_writer(codec):
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(codec.projection, np.float32), allow_pickle=False)

    return write


def load_codec(index_dir: Path, manifest: dict):
    from descriptors.rerank import RowCodec

    return RowCodec(np.load(Path(index_dir) / manifest["factor_rows"].get("codec", FACTOR_CODEC_NAME)))


def manifest_entry(codec, fit_rows: int) -> dict:
    return {"dim": codec.dim, "codec": FACTOR_CODEC_NAME, "dtype": "float16", "bytes_per_row": codec.bytes_per_row(), "fit_rows": int(fit_rows)}


class SegmentRows:
    """One segment's stored rows (memory-mapped), by position in the segment."""

    def __init__(self, rows: np.ndarray, offsets: np.ndarray) -> None:
        self.rows, self.offsets = rows, offsets

    @classmethod
    def load(cls, index_dir: Path, files: dict) -> SegmentRows | None:
        if ROWS not in files:
            return None
        return cls(np.load(index_dir / files[ROWS], mmap_mode="r"), np.load(index_dir / files[OFFSETS], mmap_mode="r"))

    def of(self, position: int) -> np.ndarray:
        if not 0 <= position < len(self.offsets) - 1:
            return np.zeros((0, self.rows.shape[1]), np.float32)
        return np.asarray(self.rows[int(self.offsets[position]):int(self.offsets[position + 1])], np.float32)

    def count(self, position: int) -> int:
        return int(self.offsets[position + 1] - self.offsets[position]) if 0 <= position < len(self.offsets) - 1 else 0


def dense_writers(rows_of, n_ids: int, dim: int, chunk: int = 65_536):
    """(rows writer, offsets writer) of ids 0..n_ids-1 (compaction's dense segment); `rows_of(ids)`
    gives each id's rows (none for removed / unknown ids)."""
    counts = np.zeros(n_ids, np.int64)
    for start in range(0, n_ids, chunk):
        ids = np.arange(start, min(start + chunk, n_ids))
        counts[start:start + len(ids)] = [len(r) for r in rows_of(ids)]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def write_rows(temp: str) -> None:
        out = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float16, shape=(int(offsets[-1]), dim))
        for start in range(0, n_ids, chunk):
            ids = np.arange(start, min(start + chunk, n_ids))
            got = [r for r in rows_of(ids) if len(r)]
            if got:
                out[offsets[start]:offsets[start + len(ids)]] = np.concatenate(got)
        out.flush()
        del out

    def write_offsets(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.save(handle, offsets, allow_pickle=False)

    return write_rows, write_offsets
