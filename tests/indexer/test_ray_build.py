"""`dff-index build --ray` on a real local Ray: the same index as a local build of the same folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from indexer_fixtures import write_variants

from indexer import IndexConfig, build_index, open_index


@pytest.fixture(scope="module")
def folder_with_bad_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-photos")
    write_variants(folder, 9, size=96)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def _config(**changes) -> IndexConfig:
    # shard_size 3: four shards (one of them with the broken file), so two workers share them
    return IndexConfig(image_size=96, k=4, max_iter=30, batch_size=3, shard_size=3, threads=1, **changes)


def _by_id(index_dir):
    with open_index(index_dir) as index:
        ids = np.sort(np.asarray(index.catalog.indexed_ids(), dtype=np.int64))
        return ids, index.paths(ids), index.vectors(ids), index.count, index.manifest


@pytest.mark.parametrize("whiten_dim", [0, 8], ids=["vectors", "rows+whitening"])
def test_ray_build_equals_local_build(ray_local, folder_with_bad_file, tmp_path, whiten_dim):
    local = build_index(folder_with_bad_file, tmp_path / "local", _config(whiten_dim=whiten_dim), progress=False)
    on_ray = build_index(
        folder_with_bad_file, tmp_path / "ray", _config(whiten_dim=whiten_dim, ray_address="auto", ray_workers=2),
        progress=False,
    )
    assert on_ray.indexed == local.indexed == 9
    assert on_ray.skipped_reasons == local.skipped_reasons == {"not-an-image": 1}
    assert on_ray.processed_this_run == 10 and on_ray.resumed_shards == 0
    # the workers' finishing times: the first shard after the start, a steady rate after it
    assert 0 < on_ray.first_shard_seconds < on_ray.seconds and on_ray.steady_images_per_second > 0
    ids_l, paths_l, vec_l, count_l, manifest_l = _by_id(tmp_path / "local")
    ids_r, paths_r, vec_r, count_r, manifest_r = _by_id(tmp_path / "ray")
    assert ids_r.tolist() == ids_l.tolist() and count_r == count_l == 9
    assert paths_r == [p.replace("/local/", "/ray/") if "/local/" in p else p for p in paths_l]
    np.testing.assert_allclose(vec_r, vec_l, atol=1e-5)
    for key in ("backbone", "descriptor", "faiss", "whitening", "dim", "counts"):
        assert manifest_r.get(key) == manifest_l.get(key), key


def test_ray_build_resumes_only_unfinished_shards(ray_local, folder_with_bad_file, tmp_path):
    """A build interrupted after two shards (here: a local one; the shards are the same files)
    finishes on Ray with only the other shards extracted."""
    from indexer.build import extract_to_partial, partial_dir_for
    from indexer.files import catalog_path, iter_image_files
    from indexer.partial import PartialBuild
    from indexer.stages import WorkItem

    out = tmp_path / "index"
    config = _config()
    files = list(iter_image_files(folder_with_bad_file))
    items = [WorkItem(i, f, catalog_path(f, folder_with_bad_file, out)) for i, f in enumerate(files)]
    partial = PartialBuild(partial_dir_for(out))
    # the same plan as the full build, but the run "dies" after the first two shards: run them only
    extract_to_partial(folder_with_bad_file, items, partial, config, None, stores_rows=config.stores_rows, progress=False, desc="x")
    journal = json.loads((partial.folder / "journal.json").read_text())
    for index in journal["completed"][2:]:
        partial.shard_path(index).unlink()  # shards never committed by the "killed" run
    summary = build_index(folder_with_bad_file, out, config.replace(ray_address="auto", ray_workers=1), progress=False)
    assert summary.resumed_shards == 2
    assert summary.processed_this_run == 10 - 6
    assert summary.indexed == 9 and not partial.folder.exists()


def test_missing_ray_names_the_extra(tmp_path, folder_with_bad_file):
    """Without ray importable, --ray fails with a one-line error naming the extra (exit 2)."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from indexer.cli import main\n"
        f"sys.exit(main(['build', {str(folder_with_bad_file)!r}, '--out', {str(tmp_path / 'x')!r}, '--ray', '--quiet']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install -e '.[ray]'" in done.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_a_worker_larger_than_the_cluster_is_a_clear_error(ray_local, folder_with_bad_file, tmp_path):
    """--gpus-per-worker on a cluster without GPUs (here: 2 CPUs, no GPU) fails at once, naming
    the flags, instead of waiting for an actor that can never be placed; nothing is written."""
    from indexer.errors import IndexerError

    for changes, named in (({"gpus_per_worker": 1.0}, "1 GPU(s)"), ({"cpus_per_worker": 4.0}, "4 CPU(s)")):
        with pytest.raises(IndexerError, match=r"lower --cpus-per-worker / --gpus-per-worker") as error:
            build_index(folder_with_bad_file, tmp_path / "x", _config(ray_address="auto", **changes), progress=False)
        assert named in str(error.value)
    assert not (tmp_path / "x").exists()


def test_shards_per_call_balance_the_workers():
    from indexer.ray_build import MAX_SHARDS_PER_CALL, shards_per_call

    assert shards_per_call(6, 1) == 3 and shards_per_call(6, 2) == 2 and shards_per_call(1, 4) == 1
    assert shards_per_call(10_000, 4) == MAX_SHARDS_PER_CALL
