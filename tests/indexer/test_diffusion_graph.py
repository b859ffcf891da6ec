"""The diffusion k-NN graph stored with an index (indexer/graph.py): incremental = rebuilt.

A real index (built from photos), then vectors added through `add_vectors` (clustered random
unit vectors, so that the lists change), images removed, and the stored graph compared with a
graph rebuilt from scratch over the same generation (exact, brute force).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from indexer_fixtures import write_variants

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    from indexer.build import build_index
    from indexer.config import IndexConfig

    root = tmp_path_factory.mktemp("graph")
    write_variants(root / "photos", 6, size=96)
    config = IndexConfig(image_size=96, k=4, max_iter=30, batch_size=4, workers=0, shard_size=4, threads=1)
    build_index(root / "photos", root / "index", config, progress=False)
    return root / "index"


def _batch(index_dir: Path, n: int, tag: str, seed: int):
    from indexer.manifest import read_manifest

    dim = int(read_manifest(index_dir)["dim"])
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((4, dim))
    vectors = centers[rng.integers(0, 4, n)] + 0.7 * rng.standard_normal((n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    images = [(f"/elsewhere/{tag}{i}.jpg", hashlib.sha256(f"{tag}{i}".encode()).hexdigest(), 64, 64) for i in range(n)]
    return images, vectors.astype(np.float32)


def _stored_and_rebuilt(index_dir: Path):
    from indexer.graph import build_rows, read_graph
    from indexer.manifest import read_manifest

    manifest = read_manifest(index_dir)
    stored = read_graph(index_dir, manifest)
    return stored, build_rows(index_dir, manifest, stored.k)


def _assert_prefixes(stored, rebuilt) -> int:
    """Every stored list is a prefix of the rebuilt one (the bound); returns how many are shorter."""
    np.testing.assert_array_equal(stored.ids, rebuilt.ids)
    short = 0
    for ours, exact, sims in zip(stored.neighbours, rebuilt.neighbours, stored.similarities, strict=True):
        n = int((ours >= 0).sum())
        np.testing.assert_array_equal(ours[:n], exact[:n])
        assert np.all(ours[n:] == -1) and np.all(np.isinf(sims[n:]))
        short += n < len(ours)
    return short


def test_adds_keep_the_graph_equal_to_a_rebuild_and_removals_leave_prefixes_until_compact(plain: Path, tmp_path: Path) -> None:
    from indexer.compact import compact_index
    from indexer.update import add_vectors, build_graph, remove_images

    index_dir = tmp_path / "index"
    shutil.copytree(plain, index_dir)
    build_graph(index_dir, 3, depth=1000)  # depth past N: every list a new image enters is found
    for seed, tag in enumerate("ab"):
        add_vectors(index_dir, *_batch(index_dir, 12, tag, seed))
    stored, rebuilt = _stored_and_rebuilt(index_dir)
    assert len(stored.ids) == 30
    np.testing.assert_array_equal(stored.neighbours, rebuilt.neighbours)
    np.testing.assert_allclose(stored.similarities, rebuilt.similarities, rtol=1e-5)

    assert remove_images(index_dir, ids=[2, 8, 9, 15]) == 4
    add_vectors(index_dir, *_batch(index_dir, 5, "c", 7))
    stored, rebuilt = _stored_and_rebuilt(index_dir)
    assert not np.isin(stored.neighbours, [2, 8, 9, 15]).any()
    assert _assert_prefixes(stored, rebuilt) > 0  # some lists lost a neighbour and were not refilled

    compact_index(index_dir)
    stored, rebuilt = _stored_and_rebuilt(index_dir)
    np.testing.assert_array_equal(stored.neighbours, rebuilt.neighbours)


def test_a_list_misses_an_added_image_only_outside_its_search_depth(plain: Path, tmp_path: Path) -> None:
    """The bound, made to happen: K 1, depth 1. An outlier x whose nearest is the added image b,
    while b's nearest is c1: b's one search does not see x, so x's list misses b (a rebuild has it)
    and b's row and every other row are exact. With the default depth (4 K) the same adds are exact."""
    from indexer.update import add_vectors, build_graph

    def unit(*pairs):
        from indexer.manifest import read_manifest

        v = np.zeros(int(read_manifest(plain)["dim"]), np.float32)
        for axis, value in pairs:
            v[axis] = value
        return v / np.linalg.norm(v)

    def image(tag):
        return (f"/elsewhere/{tag}.jpg", hashlib.sha256(tag.encode()).hexdigest(), 64, 64)

    first = [unit((0, 1)), unit((0, 1), (2, 0.1)), unit((1, 1), (0, 0.3))]  # c1, c2, x
    b = unit((0, 1), (1, 0.5))
    for depth, expect_miss in ((1, True), (None, False)):
        index_dir = tmp_path / f"index-{depth}"
        shutil.copytree(plain, index_dir)
        build_graph(index_dir, 1, depth=depth)
        ids = add_vectors(index_dir, [image(t) for t in ("c1", "c2", "x")], np.stack(first)).ids
        b_id = add_vectors(index_dir, [image("b")], b[None, :]).ids[0]
        stored, rebuilt = _stored_and_rebuilt(index_dir)
        differ = [int(i) for i, ours, exact in zip(stored.ids, stored.neighbours, rebuilt.neighbours, strict=True) if not np.array_equal(ours, exact)]
        if expect_miss:
            x = ids[2]
            assert differ == [x]
            assert rebuilt.rows([x])[x][0][0] == b_id and stored.rows([x])[x][0][0] == ids[0]  # x kept c1
            assert stored.rows([b_id])[b_id][0][0] == ids[0]  # b's own nearest is c1, not x
        else:
            assert differ == []


def test_a_graph_of_another_generation_is_refused_with_the_command_that_fixes_it(plain: Path, tmp_path: Path) -> None:
    from indexer.graph import StaleGraphError, read_graph
    from indexer.manifest import read_manifest, write_manifest
    from indexer.update import build_graph

    index_dir = tmp_path / "index"
    shutil.copytree(plain, index_dir)
    with pytest.raises(Exception, match="dff-index graph"):
        read_graph(index_dir, read_manifest(index_dir))
    build_graph(index_dir, 2)
    manifest = read_manifest(index_dir)
    manifest["generation"] += 1  # what a writer that does not know the graph would leave
    write_manifest(index_dir, manifest)
    with pytest.raises(StaleGraphError, match="dff-index graph"):
        read_graph(index_dir, manifest)


def test_dff_index_graph_cli_builds_it_and_rejects_a_bad_k(plain: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(plain, index_dir)
    env = {"PYTHONPATH": f"{REPO}:{REPO / 'proto'}", "PATH": str(Path(sys.executable).parent)}
    run = [sys.executable, "-m", "indexer.cli", "graph", str(index_dir)]
    bad = subprocess.run([*run, "--k", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "graph k must be an int >= 1" in bad.stderr
    assert "graph" not in json.loads((index_dir / "manifest.json").read_text())
    done = subprocess.run([*run, "--k", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "6 images x 4 neighbours" in done.stdout
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["graph"]["k"] == 4 and manifest["graph"]["generation"] == manifest["generation"]
