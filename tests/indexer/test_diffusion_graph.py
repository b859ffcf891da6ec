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


def test_the_default_search_depth_stays_within_the_documented_bound(plain: Path, tmp_path: Path) -> None:
    """depth 4 k: a list may miss an added image only when it is not among that image's depth
    nearest; the mutual pairs diffusion uses are then exact."""
    from indexer.graph import exact_neighbours, live_chunks
    from indexer.manifest import read_manifest
    from indexer.update import add_vectors, build_graph

    index_dir = tmp_path / "index"
    shutil.copytree(plain, index_dir)
    build_graph(index_dir, 2)
    batches = [_batch(index_dir, 10, tag, seed) for seed, tag in enumerate("xyz")]
    added = []
    for images, vectors in batches:
        added += add_vectors(index_dir, images, vectors).ids
    stored, rebuilt = _stored_and_rebuilt(index_dir)
    manifest = read_manifest(index_dir)
    depth = int(manifest["graph"]["depth"])
    assert depth == 8
    for node, ours, exact in zip(stored.ids, stored.neighbours, rebuilt.neighbours, strict=True):
        if np.array_equal(ours, exact):
            continue
        missed = [int(i) for i in set(exact.tolist()) - set(ours.tolist()) if i in added]
        assert missed, f"row {node} differs without a missed added image"
        for other in missed:
            vector = np.stack([v for ids, vs in live_chunks(index_dir, manifest) for i, v in zip(ids, vs, strict=True) if i == other])
            found, _ = exact_neighbours(vector, np.array([other]), live_chunks(index_dir, manifest), depth)
            assert node not in found[0], f"row {node} missed {other} though it is among its {depth} nearest"


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
