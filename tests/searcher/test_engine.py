"""SearchEngine on a real index built by the real indexer (no gRPC)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from searcher_fixtures import EXTRA_PHOTO, INDEXED_PHOTOS, jpeg_bytes, photo

from searcher.engine import (
    QUEUE_STAGE,
    STAGES,
    EngineConfig,
    InvalidQueryError,
    QueryDeadlineError,
    SearchEngine,
    validate_box,
)


def _name(path: str) -> str:
    return Path(path).stem


def test_every_indexed_photo_finds_its_own_copy_at_rank_1(engine, photo_folder: Path) -> None:
    for name in INDEXED_PHOTOS:
        hits = engine.search((photo_folder / f"{name}.jpg").read_bytes(), top_k=3)
        assert _name(hits[0].path) == name
        assert hits[0].rank == 1 and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].score > hits[1].score  # a different photo scores lower
        assert [h.rank for h in hits] == [1, 2, 3]


def test_a_full_image_box_keeps_every_factor_and_gives_the_same_ranking(engine, photo_folder: Path) -> None:
    data = (photo_folder / "coffee.jpg").read_bytes()
    plain = engine.query(data, top_k=5)
    width, height = plain.query_size
    boxed = engine.query(data, box=(0, 0, width, height), top_k=5)
    k = engine.extractor.config.k
    assert plain.query_factors == boxed.query_factors == k
    assert [h.id for h in plain.hits] == [h.id for h in boxed.hits]
    np.testing.assert_allclose([h.score for h in plain.hits], [h.score for h in boxed.hits], atol=1e-5)


def test_a_small_box_uses_fewer_factors(engine, photo_folder: Path) -> None:
    outcome = engine.query((photo_folder / "chelsea.jpg").read_bytes(), box=(60, 0, 230, 213), top_k=3)
    assert 1 <= outcome.query_factors < engine.extractor.config.k
    assert _name(outcome.hits[0].path) == "chelsea"


def test_query_expansion_equals_the_hand_computed_average(engine, photo_folder: Path) -> None:
    data = (photo_folder / "rocket.jpg").read_bytes()
    index = engine.index
    first = engine.search(data, top_k=10)
    # the query's own descriptor is its indexed copy's vector (same file, same extractor)
    query = index.vectors([first[0].id])[0]
    top = [h.id for h in first[:3]]
    expanded = query + index.vectors(top).sum(axis=0)
    expanded /= np.linalg.norm(expanded)
    scores, ids = index.search(expanded[None, :], 10)
    hits = engine.search(data, top_k=10, query_expansion=3)
    assert [h.id for h in hits] == ids[0].tolist()
    np.testing.assert_allclose([h.score for h in hits], scores[0], atol=2e-3)


def test_stage_timings_cover_the_pipeline(engine, photo_folder: Path) -> None:
    outcome = engine.query((photo_folder / "coins.jpg").read_bytes(), top_k=2, query_expansion=1, rerank=3)
    assert set(outcome.stages_ms) == (set(STAGES) - {"localization"}) | {QUEUE_STAGE}
    assert all(ms >= 0 for ms in outcome.stages_ms.values())
    assert outcome.stages_ms["forward"] > outcome.stages_ms["faiss"]


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((50, 10, 50, 40), "empty"),
        ((60, 10, 20, 40), "empty"),
        ((0, 0, 400, 100), "outside"),
        ((-5, 0, 100, 100), "outside"),
        ((0, 0, float("nan"), 10), "non-finite"),
    ],
)
def test_bad_boxes_are_refused_with_the_reason(box, message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message) as info:
        validate_box(box, 320, 213)
    assert info.value.reason == "bad-box"


def test_top_k_and_query_expansion_ranges(engine, photo_folder: Path) -> None:
    data = (photo_folder / "coins.jpg").read_bytes()
    for top_k in (0, engine.config.max_top_k + 1):
        with pytest.raises(InvalidQueryError, match="top_k") as info:
            engine.search(data, top_k=top_k)
        assert info.value.reason == "bad-top-k"
    with pytest.raises(InvalidQueryError, match="query_expansion"):
        engine.search(data, query_expansion=engine.config.max_query_expansion + 1)
    # asking for more than the index holds returns all of it
    assert len(engine.search(data, top_k=engine.config.max_top_k)) == len(INDEXED_PHOTOS)


def test_an_expired_deadline_stops_the_query(engine, photo_folder: Path) -> None:
    with pytest.raises(QueryDeadlineError, match="deadline"):
        engine.query((photo_folder / "coins.jpg").read_bytes(), deadline=time.monotonic() - 1)


def test_localization_finds_a_planted_object(index_copy: Path) -> None:
    """The cat of chelsea pasted at a known place on a brick wall: the predicted box is there."""
    from descriptors.localization import iou

    engine = SearchEngine(index_copy)
    cat = photo("chelsea")  # 320x213
    cat_box = (60.0, 0.0, 230.0, 213.0)
    planted = photo("brick").resize((400, 300))
    planted.paste(cat.crop((60, 0, 230, 213)), (200, 80))
    truth = (200.0, 80.0, 370.0, 293.0)
    added = engine.add_images([("planted", jpeg_bytes(planted))])[0]
    outcome = engine.query(jpeg_bytes(cat), box=cat_box, top_k=2, localize=True)
    by_id = {hit.id: hit for hit in outcome.hits}
    assert added.id in by_id, "the planted image should rank in the top 2 for the cat box"
    hit = by_id[added.id]
    assert (hit.width, hit.height) == (400, 300) and not hit.image_missing
    assert iou(hit.box, truth) > 0.5
    assert "localization" in outcome.stages_ms


def test_heatmaps_for_show_come_with_the_same_boxes_as_colocalize(engine, photo_folder: Path) -> None:
    from descriptors.localization import colocalize, colocalize_heatmaps

    backbone = engine.backbone
    images = [photo("chelsea"), photo("coffee"), photo("astronaut")]
    acts = backbone.extract([backbone.preprocess(img, 224) for img in images])
    box, whs = (60.0, 0.0, 230.0, 213.0), [img.size for img in images[1:]]
    expected = colocalize(acts[0], box, images[0].size, acts[1:], whs, 4)
    found = colocalize_heatmaps(acts[0], box, images[0].size, acts[1:], whs, 4)
    boxes, query_map, match_maps = found.boxes, found.query_heatmap, found.match_heatmaps
    assert boxes == expected
    assert query_map.shape == acts[0].shape[1:]
    assert [m.shape for m in match_maps] == [a.shape[1:] for a in acts[1:]]


def test_add_search_remove_and_restart(index_copy: Path) -> None:
    engine = SearchEngine(index_copy)
    before = engine.count
    new = jpeg_bytes(photo(EXTRA_PHOTO))
    added = engine.add_images([("retina-1", new)])
    assert len(added) == 1 and not added[0].duplicate
    assert Path(added[0].path).parent == index_copy / "uploads" and Path(added[0].path).suffix == ".jpg"
    assert engine.count == before + 1
    hit = engine.search(new, top_k=1)[0]
    assert (hit.id, hit.key) == (added[0].id, "retina-1") and hit.score == pytest.approx(1.0, abs=1e-3)

    # the same content again is recognized, not indexed twice
    again = engine.add_images([("retina-again", new)])
    assert again[0].duplicate and again[0].id == added[0].id and engine.count == before + 1

    # a restarted engine sees the addition and the key
    restarted = SearchEngine(index_copy)
    assert restarted.count == before + 1
    assert restarted.search(new, top_k=1)[0].id == added[0].id

    assert engine.remove_images(ids=[added[0].id]) == 1
    assert engine.count == before
    assert added[0].id not in [h.id for h in engine.search(new, top_k=20)]
    assert not Path(added[0].path).exists()  # the upload went with it
    assert SearchEngine(index_copy).count == before


def test_add_rejects_the_whole_batch_when_one_image_is_bad(index_copy: Path) -> None:
    engine = SearchEngine(index_copy)
    before = engine.count
    with pytest.raises(InvalidQueryError, match=r"image 1 \(key 'broken'\).*nothing was added"):
        engine.add_images([("good", jpeg_bytes(photo(EXTRA_PHOTO))), ("broken", b"not an image")])
    assert engine.count == before
    assert not any((index_copy / "uploads").glob("*.jpg")) if (index_copy / "uploads").exists() else True


def test_a_result_whose_image_is_gone_gets_no_box_and_a_flag(index_copy: Path) -> None:
    engine = SearchEngine(index_copy)
    data = jpeg_bytes(photo(EXTRA_PHOTO))
    added = engine.add_images([("doomed", data)])[0]
    Path(added.path).unlink()
    hits = engine.search(data, top_k=3, localize=True)
    assert hits[0].id == added.id
    assert hits[0].image_missing and hits[0].box is None
    assert all(not h.image_missing and h.box is not None for h in hits[1:])


def test_searches_during_an_add_see_the_old_or_the_new_index(index_copy: Path) -> None:
    engine = SearchEngine(index_copy)
    old_ids = {h.id for h in engine.search(jpeg_bytes(photo("coins")), top_k=20)}
    data = jpeg_bytes(photo(EXTRA_PHOTO))
    seen: list[list[int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            try:
                hits = engine.search(data, top_k=20)
                assert all(h.path for h in hits)
                seen.append([h.id for h in hits])
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=searcher)
    thread.start()
    added = engine.add_images([("during", data)])[0]
    removed = engine.remove_images(ids=[added.id])
    time.sleep(0.2)
    stop.set()
    thread.join()
    assert not errors and seen and removed == 1
    new_ids = old_ids | {added.id}
    for ids in seen:  # every answer is a full ranking of one of the index states
        assert set(ids) in (old_ids, new_ids)


def test_dynamic_batching_groups_concurrent_forwards_with_unchanged_results(built_index: Path, photo_folder) -> None:
    engine = SearchEngine(EngineConfig(index_dir=built_index, max_batch=4, batch_timeout_ms=200, compute_slots=4))
    try:
        img = photo("coffee")
        tensor = engine.backbone.preprocess(img, 160)
        reference = engine.backbone.extract([tensor])[0]
        results: list[torch.Tensor] = []
        threads = [threading.Thread(target=lambda: results.append(engine._batcher.run(tensor))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert max(engine._batcher.batch_sizes) > 1
        for result in results:
            torch.testing.assert_close(result, reference, atol=1e-4, rtol=1e-4)
        hits = engine.search((photo_folder / "coffee.jpg").read_bytes(), top_k=1)
        assert _name(hits[0].path) == "coffee"
    finally:
        engine.close()
