"""Full-image queries that are database images reuse their database descriptors (no second NMF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import descriptors.pipeline
from descriptors.backbones import load_backbone
from evaluation.cache import ActivationCache, ImageRequest
from evaluation.config import EvalConfig
from evaluation.encode import MethodEncoder
from evaluation.runners import run_instance

METHODS = ("mac", "nmf-v", "nmf-vu")


@pytest.fixture
def nmf_items(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of activations of each NMF call (every NMF method goes through this one function)."""
    calls: list[int] = []
    factorize = descriptors.pipeline.factorize_activations

    def counting(acts, *args, **kwargs):
        calls.append(len(acts))
        return factorize(acts, *args, **kwargs)

    monkeypatch.setattr(descriptors.pipeline, "factorize_activations", counting)
    return calls


def test_only_box_queries_and_queries_outside_the_database_are_encoded(
    synthetic_paris: Path, tmp_path: Path, nmf_items: list[int]
) -> None:
    cache = ActivationCache(tmp_path / "cache", load_backbone("efficientnet-lite0"), 96)
    encoder = MethodEncoder(cache, METHODS, progress=False)
    images = sorted((synthetic_paris / "jpg").glob("*.jpg"))
    db_requests = [ImageRequest(p) for p in images[:8]]
    database = encoder.database(db_requests)
    assert sum(nmf_items) == 8
    # in the database without a box (twice), in the database with a box, outside the database
    requests = [
        ImageRequest(images[2]),
        ImageRequest(images[5]),
        ImageRequest(images[10]),
        ImageRequest(images[2]),
    ]
    boxes = [None, (0.0, 0.0, 72.0, 96.0), None, None]

    nmf_items.clear()
    reused = encoder.queries_reusing_database(requests, boxes, db_requests, database)
    assert sum(nmf_items) == 2  # the box query and the outside one; not the two full database images
    nmf_items.clear()
    encoded = encoder.queries(requests, boxes)
    assert sum(nmf_items) == 4
    for m in METHODS:
        assert reused[m].shape == encoded[m].shape == (4, database[m].shape[1])
        np.testing.assert_array_equal(reused[m][[0, 3]], database[m][[2, 2]])
        np.testing.assert_allclose(reused[m], encoded[m], rtol=0, atol=1e-6)


def test_leave_one_out_runs_no_query_nmf_and_matches_re_encoding(
    synthetic_paris: Path, tmp_path: Path, nmf_items: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = EvalConfig(
        methods=METHODS,
        image_size=96,
        qe=(0, 2),
        protocol="landmark-loo",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    report = run_instance("paris6k", synthetic_paris, config)
    assert report.coverage.queries == 12 and report.coverage.images == 15
    assert nmf_items == [15]  # the database's, one NMF per image; none for the 12 queries

    def re_encode(self, requests, boxes, db_requests, database):
        return self.queries(requests, boxes)

    nmf_items.clear()
    monkeypatch.setattr(MethodEncoder, "queries_reusing_database", re_encode)
    re_encoded = run_instance("paris6k", synthetic_paris, config)
    assert sum(nmf_items) == 15 + 12
    assert [(r.method, r.qe) for r in report.results] == [(r.method, r.qe) for r in re_encoded.results]
    for ours, theirs in zip(report.results, re_encoded.results, strict=True):
        assert ours.scores == pytest.approx(theirs.scores, abs=1e-9), ours.method
