"""Per-shard resume: after an interrupted build, a changed or new file redoes only its own shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from indexer_fixtures import photo, write_variants

from indexer.build import build_index, extract_to_partial, partial_dir_for
from indexer.files import catalog_path, iter_image_files
from indexer.open_index import open_index
from indexer.partial import PartialBuild
from indexer.stages import WorkItem


def _stage_one(folder: Path, out: Path, config, extractor) -> tuple[int, int]:
    partial = PartialBuild(partial_dir_for(out))
    files = list(iter_image_files(folder))
    items = [WorkItem(i, f, catalog_path(f, folder, out)) for i, f in enumerate(files)]
    processed, resumed, _ = extract_to_partial(folder, items, partial, config, extractor, stores_rows=config.stores_rows, progress=False, desc="x")
    return processed, resumed


def test_a_new_or_changed_file_redoes_only_its_shard_and_the_build_equals_a_fresh_one(tmp_path: Path, tiny_config, backbone) -> None:
    from descriptors.pipeline import Extractor

    config = tiny_config.replace(workers=0)
    extractor = Extractor(backbone, config.descriptor_config(), image_size=config.image_size)
    folder = tmp_path / "photos"
    write_variants(folder, 12, size=96)  # img_000 .. img_011: shards [0-3] [4-7] [8-11]
    out = tmp_path / "index"
    assert _stage_one(folder, out, config, extractor) == (12, 0)  # an interrupted build's stage 1
    # a new file sorting into the second shard: it shifts every later image by one position
    photo("rocket", 96).save(folder / "img_004a.jpg")
    processed, resumed = _stage_one(folder, out, config, extractor)
    assert (processed, resumed) == (4, 3)  # [4 4a 5 6] is new; [0-3] kept; [7-10] and [11] re-formed
    # a changed file: only its shard
    photo("horse", 96).save(folder / "img_009.jpg")
    assert _stage_one(folder, out, config, extractor) == (4, 3)
    resumed_build = build_index(folder, out, config, progress=False, extractor=extractor)
    assert resumed_build.processed_this_run == 0 and resumed_build.resumed_shards == 4
    fresh = build_index(folder, tmp_path / "fresh", config, progress=False, extractor=extractor)
    assert fresh.processed_this_run == 13
    with open_index(out) as a, open_index(tmp_path / "fresh") as b:
        ids = np.arange(13)
        assert a.paths(ids) == b.paths(ids)
        np.testing.assert_allclose(a.vectors(ids), b.vectors(ids), atol=1e-5)
