"""descriptors.atomic_files: the one atomic-write implementation (index, caches, reports, exports)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from descriptors.atomic_files import atomic_write, atomic_write_json, atomic_write_text
from descriptors.whitening import PCAWhitening


def test_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    # the usual 0666 & ~umask, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})

    def half_then_fail(temp: str) -> None:
        with open(temp, "w") as handle:
            handle.write("{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_fail)
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_mkdir_and_suffix_for_numpy_writers(tmp_path) -> None:
    target = tmp_path / "deep" / "x.npy"
    atomic_write(target, lambda temp: np.save(temp, np.arange(3)), suffix=".npy", mkdir=True)
    assert np.load(target).tolist() == [0, 1, 2]
    assert [p.name for p in target.parent.iterdir()] == ["x.npy"]


def test_whitening_save_goes_through_it(tmp_path) -> None:
    rows = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    white = PCAWhitening.fit(rows)
    target = tmp_path / "sub" / "w.npz"
    white.save(target)
    assert [p.name for p in target.parent.iterdir()] == ["w.npz"]
    assert np.allclose(PCAWhitening.load(target).projection, white.projection)
