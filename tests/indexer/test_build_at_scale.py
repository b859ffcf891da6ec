"""What keeps a build's memory and time bounded as the collection grows: the catalog written in
chunks during stage 2, no polysemous PQ training, nlist from the collection size, and the
summary's start-up / steady-state split."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

import indexer.build as build_module
from indexer.build import build_index
from indexer.config import auto_large_factory, ivf_nlist
from indexer.faiss_index import build_faiss_index, disable_polysemous_training, new_index
from indexer.summary import ShardClock


def test_catalog_written_in_chunks_holds_every_row(photo_folder: Path, tmp_path: Path, tiny_config, monkeypatch) -> None:
    (photo_folder / "broken.jpg").write_bytes(b"not an image")
    monkeypatch.setattr(build_module, "CATALOG_CHUNK", 3)  # 9 files, shards of 4: several transactions
    summary = build_index(photo_folder, tmp_path / "index", tiny_config, progress=False)
    with sqlite3.connect(tmp_path / "index" / "catalog.sqlite") as db:
        rows = db.execute("SELECT id, status FROM images ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(9))
    assert sum(status == "indexed" for _, status in rows) == summary.indexed == 8
    assert [s.reason for s in summary.skipped] == ["not-an-image"]
    assert summary.ids == [i for i, status in rows if status == "indexed"]
    # 3 shards: the summary splits the start-up (first shard) from the steady rate after it
    assert summary.first_shard_seconds is not None and 0 < summary.first_shard_seconds < summary.seconds
    assert summary.steady_images_per_second is not None and summary.steady_images_per_second > 0


def test_shard_clock_steady_rate_leaves_the_first_shard_out() -> None:
    clock = ShardClock(started=100.0)
    for images, finished_at in ((16, 132.0), (16, 130.0), (8, 134.0)):  # two Ray workers: out of order
        clock.record(images, finished_at)
    assert clock.first_shard_seconds == 30.0
    assert clock.steady_images_per_second == 24 / 4.0
    single = ShardClock(started=0.0)
    single.record(16, 5.0)
    assert single.steady_images_per_second is None


def test_ivf_pq_is_built_without_polysemous_training() -> None:
    import faiss

    fresh = new_index(64, "IVF4,PQ8x4,RFlat")  # kept referenced: the IVF below lives inside it
    assert faiss.downcast_index(faiss.extract_index_ivf(fresh)).do_polysemous_training  # FAISS's factory turns it on ...
    vectors = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_faiss_index(vectors, np.arange(2000), "IVF4,PQ8x4,RFlat", train_max=2000)
    assert not faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training  # ... we turn it off
    flat_pq = faiss.IndexIDMap2(faiss.index_factory(64, "PQ8x4", faiss.METRIC_INNER_PRODUCT))
    disable_polysemous_training(flat_pq)
    assert not faiss.downcast_index(flat_pq.index).do_polysemous_training


def test_nlist_grows_with_the_collection() -> None:
    assert [ivf_nlist(n) for n in (10_000, 1_000_000, 10_000_000, 100_000_000, 10**10)] == [256, 1024, 4096, 8192, 65536]
    assert auto_large_factory(10_000_000, 256) == "IVF4096,PQ64,RFlat"
