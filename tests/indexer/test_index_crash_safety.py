"""Crash safety of add, remove and compact: a real SIGKILL of a subprocess at every step.

Each operation is run once with `DFF_INDEX_CRASH_TRACE` to list its crash points (every file
written or renamed, the catalog transaction, the manifest rename), then once per point i with
`DFF_INDEX_CRASH_AT=i` on a fresh copy of the index. Reopening must give exactly the state before
or exactly the state after, and running the operation again must give the state after, with no
file left over that the manifest does not name. `add` is swept through `indexer.update.add_vectors`
(what `add_images` runs after encoding, every crash point included) so that each step does not
load the CNN; one real `dff-index add` is killed at its commit point.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from indexer_fixtures import photo, write_variants

REPO = Path(__file__).resolve().parents[2]


ADD_VECTORS = """
import json, sys
import numpy as np
from indexer.update import add_vectors
spec = json.load(open(sys.argv[2]))
rows = [np.array(r, np.float32) for r in spec["rows"]]
add_vectors(sys.argv[1], [tuple(i) for i in spec["images"]], np.array(spec["vectors"], np.float32), rows=rows)
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'proto'}", **(env or {}))
    command = ["-c", ADD_VECTORS, *args[1:]] if args[0] == "add-vectors" else ["-m", "indexer.cli", *args]
    return subprocess.run(
        [sys.executable, *command], cwd=REPO, env=full_env, text=True, capture_output=True, timeout=600
    )


def _state(index_dir: Path) -> dict:
    """What a reader sees: rows, vectors, re-ranking rows (none for an id not indexed), and FAISS
    agreeing with them (each finds itself)."""
    from indexer.open_index import open_index

    with open_index(index_dir) as index:
        rows = index.catalog.rows()
        indexed = np.array([r.id for r in rows if r.indexed], np.int64)
        vectors = index.vectors(indexed)
        assert index.has_factor_rows
        others = np.setdiff1d(np.arange(int(index.manifest["next_id"]) + 2), indexed)
        assert all(len(r) == 0 for r in index.factor_rows(others)), "an image not indexed has re-ranking rows"
        assert index.count == len(indexed), "FAISS and the catalog disagree"
        if len(indexed):
            _, found = index.search(vectors, 1)
            np.testing.assert_array_equal(found[:, 0], indexed)
        state = {
            "rows": [(r.id, r.path, r.sha256, r.status) for r in rows],
            "vectors": vectors.round(5).tolist(),
            "factor_rows": [r.tolist() for r in index.factor_rows(indexed)],
            "counts": index.manifest["counts"],
        }
        if index.manifest.get("graph"):  # the diffusion graph: read without error, same generation
            from indexer.graph import read_graph

            graph = read_graph(index_dir, index.manifest)
            state["graph"] = [graph.ids.tolist(), graph.neighbours.tolist()]
        return state


def _no_stray_files(index_dir: Path) -> None:
    from indexer.generations import referenced_files
    from indexer.manifest import read_manifest

    named = referenced_files(read_manifest(index_dir))
    segments = index_dir / "segments"
    present = {f"segments/{p.name}" for p in segments.iterdir()} if segments.is_dir() else set()
    present |= {p.name for p in index_dir.iterdir() if p.suffix in (".faiss", ".npy") or ".tmp" in p.name}
    assert present <= named


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    """A small index, and the same after an add and a remove (segments + tombstones to compact)."""
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.update import add_images, remove_images

    root = tmp_path_factory.mktemp("crash")
    folder = root / "photos"
    write_variants(folder, 6, size=96)
    config = IndexConfig(image_size=96, k=4, max_iter=30, batch_size=4, workers=0, shard_size=4, threads=1)
    plain = root / "plain"
    build_index(folder, plain, config, progress=False)
    grown = root / "grown"
    shutil.copytree(plain, grown)
    add_images(grown, write_variants(root / "more", 9, size=96)[6:], progress=False, config=config)
    assert remove_images(grown, ids=[1, 7]) == 2
    new = root / "new"
    new.mkdir()
    photo("coffee", 96).rotate(90).save(new / "rotated.jpg")
    photo("rocket", 96).save(folder / "img_002.jpg")  # changed content at an indexed path: a replacement
    added = [new / "rotated.jpg", folder / "img_002.jpg"]
    # vectors computed elsewhere (random unit vectors of the index's dimension) for add_vectors
    import json

    from indexer.manifest import read_manifest

    dim = int(read_manifest(plain)["dim"])
    vectors = np.random.default_rng(0).standard_normal((len(added), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # their local rows (non-negative, like a ReLU layer's), 4 and 3 of them: stored as re-ranking rows
    local_rows = [np.abs(np.random.default_rng(i).standard_normal((4 - i, dim))).astype(np.float32) for i in range(len(added))]
    spec = root / "add.json"
    spec.write_text(json.dumps({
        "images": [[str(p), hashlib.sha256(p.read_bytes()).hexdigest(), 96, 96] for p in added],
        "vectors": vectors.tolist(),
        "rows": [r.tolist() for r in local_rows],
    }))
    from indexer.update import build_graph

    graphed = root / "graphed"
    shutil.copytree(grown, graphed)
    build_graph(graphed, 2)
    return {
        "root": root, "plain": plain, "grown": grown, "graphed": graphed, "add": [str(p) for p in added], "spec": str(spec),
    }


OPERATIONS = {
    "add": ("plain", lambda b, d: ["add-vectors", str(d), b["spec"]]),
    "remove": ("grown", lambda b, d: ["remove", str(d), "--ids", "0", "3", "8"]),
    "compact": ("grown", lambda b, d: ["compact", str(d)]),
    "graph": ("grown", lambda b, d: ["graph", str(d), "--k", "2"]),
    "add-with-graph": ("graphed", lambda b, d: ["add-vectors", str(d), b["spec"]]),
    "compact-with-graph": ("graphed", lambda b, d: ["compact", str(d)]),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_kill_at_any_step_leaves_the_state_before_or_after_and_the_redo_works(bases: dict, operation: str, tmp_path: Path) -> None:
    base_name, make_args = OPERATIONS[operation]
    base = bases[base_name]
    before = _state(base)
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    trace = tmp_path / "trace.txt"
    done = _cli(*make_args(bases, reference), env={"DFF_INDEX_CRASH_TRACE": str(trace)})
    assert done.returncode == 0, done.stderr
    after = _state(reference)
    assert after != before or operation.startswith("compact")
    steps = trace.read_text().splitlines()
    assert len(steps) >= 4, steps  # at least: data file written + renamed, catalog, manifest
    outcomes = []
    for i in range(1, len(steps) + 1):
        crashed = tmp_path / f"crash-{i}"
        shutil.copytree(base, crashed)
        killed = _cli(*make_args(bases, crashed), env={"DFF_INDEX_CRASH_AT": str(i)})
        assert killed.returncode == -9, (steps[i - 1], killed.stderr)
        state = _state(crashed)
        assert state in (before, after), f"crash at {steps[i - 1]} left a third state"
        outcomes.append("after" if state == after else "before")
        redo = _cli(*make_args(bases, crashed))
        # `dff-index remove` exits 1 when none of the ids is there any more (removed before the crash)
        assert redo.returncode == (1 if operation == "remove" and state == after else 0), redo.stderr
        assert _state(crashed) == after, f"redo after a crash at {steps[i - 1]}"
        _no_stray_files(crashed)
        shutil.rmtree(crashed)
    # the manifest rename is the commit point: every crash before it gives the old state
    commit = next(i for i, s in enumerate(steps) if s.endswith("manifest.json: renamed"))
    if before != after:
        assert outcomes[:commit] == ["before"] * commit and set(outcomes[commit:]) == {"after"}


def test_compact_folds_segments_and_tombstones_into_one_checkpoint(bases: dict, tmp_path: Path) -> None:
    from indexer.compact import compact_index
    from indexer.manifest import read_manifest
    from indexer.open_index import index_info

    index_dir = tmp_path / "index"
    shutil.copytree(bases["grown"], index_dir)
    before = _state(index_dir)
    manifest = read_manifest(index_dir)
    assert len(manifest["segments"]) == 2 and len(manifest["tombstones"]) == 1
    done = compact_index(index_dir)
    assert done["generation_after"] == manifest["generation"] + 1 and done["indexed"] == 7
    after = read_manifest(index_dir)
    assert len(after["segments"]) == 1 and after["tombstones"] == [] and after["faiss"]["generation"] == after["generation"]
    assert _state(index_dir) == before
    assert not (index_dir / "segments").exists() or not any((index_dir / "segments").iterdir())
    assert index_info(index_dir)["live"]["vectors_in_faiss"] == 7
    _no_stray_files(index_dir)


def test_a_real_dff_index_add_killed_at_its_commit_point_changes_nothing_and_the_redo_works(bases: dict, tmp_path: Path) -> None:
    args = ["--quiet", "--threads", "1", "--workers", "0"]
    before = _state(bases["plain"])
    reference = tmp_path / "reference"
    shutil.copytree(bases["plain"], reference)
    trace = tmp_path / "trace.txt"
    done = _cli("add", str(reference), *bases["add"], *args, env={"DFF_INDEX_CRASH_TRACE": str(trace)})
    assert done.returncode == 0, done.stderr
    after = _state(reference)
    steps = trace.read_text().splitlines()
    commit = next(i for i, s in enumerate(steps, start=1) if s.endswith("manifest.json: written, not renamed"))
    crashed = tmp_path / "crashed"
    shutil.copytree(bases["plain"], crashed)
    killed = _cli("add", str(crashed), *bases["add"], *args, env={"DFF_INDEX_CRASH_AT": str(commit)})
    assert killed.returncode == -9, killed.stderr
    assert _state(crashed) == before  # catalog rows and the segment were written, not committed
    redo = _cli("add", str(crashed), *bases["add"], *args)
    assert redo.returncode == 0, redo.stderr
    assert _state(crashed) == after
    _no_stray_files(crashed)
