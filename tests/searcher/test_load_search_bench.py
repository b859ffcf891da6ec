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


def test_qps_ratio_ceiling_known_answer() -> None:
    from benchmarks.load_search import qps_ratio_ceiling

    # p50 58 ms of which the forward 34: 24 ms outside it; 2 CPUs, a 34.7 ms bare forward that
    # costs 66.4 ms on one thread: at most 2 x 34.7 / (66.4 + 24) of its rate
    row = {"p50": 58.0, "stages": {"forward": 34.0, "decode": 12.0}}
    ceiling = qps_ratio_ceiling(row, 34.7, 66.4, 2)
    assert ceiling["outside_forward_ms"] == 24.0
    assert abs(ceiling["qps_ratio"] - 2 * 34.7 / 90.4) < 1e-12
    # a perfectly parallel forward and nothing outside it: the bare rate itself
    assert qps_ratio_ceiling({"p50": 30.0, "stages": {"forward": 30.0}}, 30.0, 60.0, 2)["qps_ratio"] == 1.0
