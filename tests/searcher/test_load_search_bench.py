"""benchmarks/load_search.py's FAISS share: the real query descriptors of a real index, timed
against a Flat index of the same dimension (and of 256, a whitened index's)."""

from __future__ import annotations

from pathlib import Path

from searcher_fixtures import INDEXED_PHOTOS

from benchmarks.load_search import faiss_share


def test_faiss_share_encodes_real_queries(built_index: Path, photo_folder: Path) -> None:
    images = [(photo_folder / f"{name}.jpg").read_bytes() for name in INDEXED_PHOTOS[:2]]
    shares = faiss_share(built_index, 2000, 100.0, images)
    assert [s["vectors"] for s in shares] == [2000] * len(shares)
    assert shares[0]["dim"] >= shares[-1]["dim"] and shares[-1]["dim"] <= 256
    assert all(s["search_ms"] > 0 and s["share"] == s["search_ms"] / 100.0 for s in shares)
