"""The re-ranking rows stored with an index (indexer/factor_rows.py): written by build in the
space a query's rows are encoded into, following add, remove and compact, stated by info."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from indexer_fixtures import photo

from descriptors.images import decode_image
from descriptors.rerank import MatchKernel, match_scores
from indexer import add_images, add_vectors, build_index, compact_index, index_info, open_index, remove_images
from indexer.manifest import build_extractor


def _query_rows(index, extractor, path) -> np.ndarray:
    return index.encode_query_rows(extractor.local_rows([decode_image(path)])[0])


def test_factor_rows_follow_build_add_remove_compact_and_match_their_own_image(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config.replace(rerank_dim=64, workers=0), progress=False)
    with open_index(out) as index:
        assert index.manifest["factor_rows"]["dim"] == 64 and index.manifest["factor_rows"]["bytes_per_row"] == 128
        stored = index.factor_rows(range(8))
        assert all(r.shape == (4, 64) for r in stored)  # K = 4 rows of 64 float16 each: 512 bytes
        np.testing.assert_allclose(np.linalg.norm(stored[0], axis=1), 1.0, atol=1e-2)
        extractor = build_extractor(index.manifest)
        # each image's query rows, encoded like the index's, match its own stored rows best (~1)
        for image_id, path in enumerate(index.paths(range(8))):
            scores = match_scores(_query_rows(index, extractor, path), stored, MatchKernel())
            assert scores.argmax() == image_id and scores[image_id] > 0.98
    info = index_info(out)
    # 8 images x 4 rows x 128 bytes + 9 offsets x 8 bytes + two .npy headers (128 bytes each)
    assert info["factor_rows_on_disk"]["bytes_per_image"] == round((8 * 4 * 128 + 9 * 8 + 2 * 128) / 8, 1)

    assert remove_images(out, ids=[2]) == 1
    extra = tmp_path / "extra.jpg"
    photo("coins").save(extra)
    (new_id,) = add_images(out, [extra], progress=False, config=tiny_config).ids
    for step in ("after add/remove", "after compact"):
        with open_index(out) as index:
            assert index.factor_rows([2])[0].shape == (0, 64), step  # removed: no rows left to match
            np.testing.assert_array_equal(index.factor_rows([0])[0], stored[0], err_msg=step)  # untouched
            assert index.factor_rows([new_id])[0].shape == (4, 64), step
            scores = match_scores(_query_rows(index, extractor, extra), index.factor_rows(range(new_id + 1)), MatchKernel())
            assert scores.argmax() == new_id and scores[2] == 0, step
        if step == "after add/remove":
            compact_index(out)
    with open_index(out) as index:
        assert len(index.manifest["segments"]) == 1 and "factor_rows" in index.manifest["segments"][0]["files"]


def test_an_add_of_vectors_without_rows_stores_none_for_them_and_rerank_dim_zero_stores_nothing(
    photo_folder: Path, tmp_path: Path, tiny_config
) -> None:
    with_rows, without = tmp_path / "with", tmp_path / "without"
    build_index(photo_folder, with_rows, tiny_config.replace(rerank_dim=32, workers=0), progress=False)
    (new_id,) = add_vectors(with_rows, [("elsewhere.jpg", "0" * 64, 10, 10)], np.eye(1, 1280, dtype=np.float32)).ids
    with open_index(with_rows) as index:
        assert index.factor_rows([new_id])[0].shape == (0, 32) and index.factor_rows([1])[0].shape == (4, 32)
    build_index(photo_folder, without, tiny_config.replace(rerank_dim=0, workers=0), progress=False)
    assert not list(without.glob("factor_*"))
    with open_index(without) as index:
        assert "factor_rows" not in index.manifest and not index.has_factor_rows
        assert index.factor_rows([0])[0].shape == (0, 0)
    assert "factor_rows_on_disk" not in index_info(without)
