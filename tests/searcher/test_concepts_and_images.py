""""Why did this match" (the joint NMF's concepts on the query, the kept ones, the concept each
result shares) and GetImage (indexed ids only), in the engine and over gRPC."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from searcher_fixtures import jpeg_bytes, photo

from searcher.engine import ImageNotFoundError


def _two_photos() -> bytes:
    canvas = Image.new("RGB", (640, 240), "white")
    canvas.paste(photo("coffee"), (0, 0))
    canvas.paste(photo("chelsea"), (320, 0))
    return jpeg_bytes(canvas)


def test_the_box_keeps_concepts_and_each_result_shares_one(engine) -> None:
    outcome = engine.query(_two_photos(), box=(320, 0, 640, 213), top_k=3, localize=True, with_concepts=True)
    assert Path(outcome.hits[0].path).stem == "chelsea"
    concepts = outcome.concepts
    assert [c.index for c in concepts] == list(range(len(concepts))) and len(concepts) == 4
    kept = {c.index for c in concepts if c.kept}
    assert kept and len(kept) < len(concepts)  # a box on half the image keeps some, not all
    assert sum(c.weight for c in concepts) == pytest.approx(1.0, abs=1e-5)
    for concept in concepts:
        assert concept.heatmap.max() == pytest.approx(1.0) and concept.heatmap.min() >= 0
    # a kept concept lies mostly inside the box (the right half of the query's grid)
    for concept in (c for c in concepts if c.kept):
        half = concept.heatmap.shape[1] // 2
        assert concept.heatmap[:, half:].sum() > concept.heatmap[:, :half].sum()
    for hit in outcome.hits:
        assert hit.shared_concept in kept
        assert hit.shared_concept_heatmap.max() == pytest.approx(1.0)
    plain = engine.query(_two_photos(), box=(320, 0, 640, 213), top_k=3, localize=True)
    assert plain.concepts == [] and all(h.shared_concept is None for h in plain.hits)
    assert [h.box for h in plain.hits] == [h.box for h in outcome.hits]  # same localization either way


def test_concepts_travel_over_grpc(client) -> None:
    response = client.search(_two_photos(), box=(0, 0, 320, 213), top_k=2, localize=True, return_concepts=True)
    assert Path(response.results[0].path).stem == "coffee"
    kept = [c.index for c in response.query_concepts if c.kept]
    assert len(response.query_concepts) == 4 and kept
    top = response.results[0]
    assert top.HasField("shared_concept") and top.shared_concept in kept
    values = np.asarray(top.shared_concept_heatmap.values)
    assert values.size == top.shared_concept_heatmap.height * top.shared_concept_heatmap.width > 0
    old_style = client.search(_two_photos(), top_k=2, localize=True)  # a client that never asks
    assert len(old_style.query_concepts) == 0 and not old_style.results[0].HasField("shared_concept")


def test_get_image_serves_indexed_ids_only(engine, client, photo_folder: Path) -> None:
    hit = engine.search((photo_folder / "rocket.jpg").read_bytes(), top_k=1)[0]
    stored = client.get_image(hit.id)
    assert stored.data == (photo_folder / "rocket.jpg").read_bytes() and stored.content_type == "image/jpeg"
    assert (stored.width, stored.height) == Image.open(photo_folder / "rocket.jpg").size
    small = client.get_image(hit.id, max_side=64)
    assert max(Image.open(io.BytesIO(small.data)).size) == 64 and small.width == stored.width
    for unknown in (-1, 10**9):
        with pytest.raises(grpc.RpcError) as caught:
            client.get_image(unknown)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "not in the index" in caught.value.details()
    with pytest.raises(ImageNotFoundError):
        engine.image(10**9)
