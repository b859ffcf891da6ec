"""Stage-1 state of a build in `OUT.partial/`: a plan, committed shards and a progress journal.

Each shard (`shards/shard-000123.npz`, `shard_size` images in id order) is written to a temp file
and renamed, then recorded in `journal.json` (also replaced atomically). After `kill -9` the same
command finds the plan unchanged and skips every shard that is both in the journal and on disk;
a plan that changed (other files, other extraction settings) discards the stale shards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import SKIPPED_PREFIX, STATUS_INDEXED
from .stages import Decoded
from .storage import atomic_write, atomic_write_json, write_error

PLAN_NAME = "plan.json"
JOURNAL_NAME = "journal.json"
SHARDS_NAME = "shards"


@dataclass
class Shard:
    """One committed shard, as read back."""

    index: int
    ids: np.ndarray  # (n,) int64
    stored_paths: list[str]
    sha256: list[str]
    widths: np.ndarray  # (n,) int64, -1 when not decodable
    heights: np.ndarray
    statuses: list[str]  # "indexed" or "skipped:<reason>"
    messages: list[str]
    row_counts: np.ndarray | None  # (n,) rows per image (rows mode)
    rows: np.ndarray | None  # (sum(row_counts), C) float32 (rows mode)
    vectors: np.ndarray | None  # (n, D) float32 (vectors mode; zeros for skipped images)

    def rows_of(self) -> list[np.ndarray | None]:
        """Per image: its rows (rows mode) or None for a skipped image."""
        assert self.rows is not None and self.row_counts is not None
        bounds = np.concatenate([[0], np.cumsum(self.row_counts)])
        return [
            self.rows[bounds[i]:bounds[i + 1]] if self.statuses[i] == STATUS_INDEXED else None
            for i in range(len(self.ids))
        ]


def plan_digest(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


class PartialBuild:
    """The `.partial` folder of one build."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.shards_dir = self.folder / SHARDS_NAME

    def open(self, plan: dict) -> tuple[set[int], bool]:
        """Create or resume. Returns (completed shard indexes, whether a stale partial was discarded)."""
        digest = plan_digest(plan)
        discarded = False
        if self.folder.exists():
            previous = self._read_json(PLAN_NAME)
            if previous is not None and previous.get("digest") == digest:
                journal = self._read_json(JOURNAL_NAME) or {}
                done = {int(i) for i in journal.get("completed", []) if self.shard_path(int(i)).is_file()}
                return done, False
            shutil.rmtree(self.folder, ignore_errors=True)
            discarded = True
        try:
            self.shards_dir.mkdir(parents=True)
        except OSError as exc:
            raise write_error(self.folder, exc) from exc
        atomic_write_json(self.folder / PLAN_NAME, {"digest": digest, "created_at": time.time(), "plan": plan})
        atomic_write_json(self.folder / JOURNAL_NAME, {"completed": [], "images_done": 0})
        return set(), discarded

    def _read_json(self, name: str) -> dict | None:
        try:
            return json.loads((self.folder / name).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def shard_path(self, index: int) -> Path:
        return self.shards_dir / f"shard-{index:06d}.npz"

    def commit_shard(self, index: int, decoded: Sequence[Decoded], results: Sequence[object], stores_rows: bool) -> None:
        arrays: dict[str, np.ndarray] = {
            "ids": np.array([d.item.id for d in decoded], dtype=np.int64),
            "stored_paths": np.array([d.item.stored_path for d in decoded], dtype=str),
            "sha256": np.array([d.sha256 for d in decoded], dtype=str),
            "widths": np.array([d.width if d.ok else -1 for d in decoded], dtype=np.int64),
            "heights": np.array([d.height if d.ok else -1 for d in decoded], dtype=np.int64),
            "statuses": np.array([STATUS_INDEXED if d.ok else SKIPPED_PREFIX + str(d.reason) for d in decoded], dtype=str),
            "messages": np.array([d.message or "" for d in decoded], dtype=str),
        }
        good = [np.asarray(r, dtype=np.float32) for r in results if r is not None]
        if stores_rows:
            arrays["row_counts"] = np.array([0 if r is None else len(r) for r in results], dtype=np.int64)
            width = good[0].shape[1] if good else 0
            arrays["rows"] = np.concatenate(good) if good else np.zeros((0, width), np.float32)
        else:
            dim = good[0].shape[0] if good else 0
            vectors = np.zeros((len(decoded), dim), np.float32)
            for i, r in enumerate(results):
                if r is not None:
                    vectors[i] = r
            arrays["vectors"] = vectors

        def write(temp: str) -> None:
            with open(temp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(self.shard_path(index), write)
        journal = self._read_json(JOURNAL_NAME) or {"completed": [], "images_done": 0}
        journal["completed"] = sorted({*journal.get("completed", []), index})
        journal["images_done"] = int(journal.get("images_done", 0)) + len(decoded)
        journal["updated_at"] = time.time()
        atomic_write_json(self.folder / JOURNAL_NAME, journal)

    def completed(self) -> list[int]:
        journal = self._read_json(JOURNAL_NAME) or {}
        return sorted(int(i) for i in journal.get("completed", []))

    def read_shard(self, index: int) -> Shard:
        with np.load(self.shard_path(index), allow_pickle=False) as data:
            files = set(data.files)
            return Shard(
                index=index,
                ids=data["ids"],
                stored_paths=[str(s) for s in data["stored_paths"]],
                sha256=[str(s) for s in data["sha256"]],
                widths=data["widths"],
                heights=data["heights"],
                statuses=[str(s) for s in data["statuses"]],
                messages=[str(s) for s in data["messages"]],
                row_counts=data["row_counts"] if "row_counts" in files else None,
                rows=data["rows"] if "rows" in files else None,
                vectors=data["vectors"] if "vectors" in files else None,
            )

    def iter_shards(self) -> Iterator[Shard]:
        for index in self.completed():
            yield self.read_shard(index)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
