"""Stage-1 state of a build in `OUT.partial/`: a plan, committed shards and a progress journal.

Each shard (`shards/shard-000123.npz`, `shard_size` images in id order) is written to a temp file
and renamed, then recorded in `journal.json` (also replaced atomically). A shard also records the
(catalog path, size, mtime) of each of its images. After `kill -9` (or after files changed) the
same command keeps every shard whose images are unchanged; a shard whose images moved to other
positions (a file added or deleted before them) is not recomputed either: its images' results
are reused one by one (`reuse/`) for every new shard made only of unchanged images. So a changed
or new file redoes only its own shard. Other extraction settings discard every shard.
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
REUSE_NAME = "reuse"  # shards of an earlier plan whose images are reused one by one
_PER_IMAGE = ("stored_paths", "sha256", "widths", "heights", "statuses", "messages")

ItemKey = tuple[str, int, int]  # (catalog path, size, mtime_ns): an image is unchanged when equal


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
        self._groups: dict[int, tuple[list[int], list[ItemKey]]] = {}

    def open(self, plan: dict, groups: Sequence[tuple[int, list[int], list[ItemKey]]] = ()) -> tuple[set[int], bool]:
        """Create or resume. `groups`: (shard index, its ids, its images' keys) of the current
        plan. Returns (completed shard indexes, whether a stale partial was discarded)."""
        digest = plan_digest(plan)
        self._groups = {int(g): (list(ids), [tuple(k) for k in keys]) for g, ids, keys in groups}
        discarded = False
        if self.folder.exists():
            previous = self._read_json(PLAN_NAME)
            if previous is not None and previous.get("digest") == digest:
                return self._resume(), False
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

    def _shard_keys(self, path: Path) -> list[ItemKey] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "sizes" not in data.files:
                    return None
                return [(str(p), int(a), int(b)) for p, a, b in zip(data["stored_paths"], data["sizes"], data["mtimes"], strict=True)]
        except (OSError, ValueError, KeyError):
            return None

    def _resume(self) -> set[int]:
        """Keep the shards whose images are unchanged; re-form, from the images of the others,
        every shard of the plan made only of unchanged images."""
        journal = self._read_json(JOURNAL_NAME) or {}
        done = {int(i) for i in journal.get("completed", []) if self.shard_path(int(i)).is_file()}
        keep = {g for g in done if g in self._groups and self._shard_keys(self.shard_path(g)) == self._groups[g][1]}
        reuse_dir = self.folder / REUSE_NAME
        stale = sorted(done - keep)
        if stale:
            reuse_dir.mkdir(exist_ok=True)
            for g in stale:  # set aside before the journal forgets them: a crash here loses nothing
                self.shard_path(g).replace(reuse_dir / f"{time.time_ns()}-{g}.npz")
        self._write_journal(sorted(keep), int(journal.get("images_done", 0)))
        pool: dict[ItemKey, tuple[Path, int]] = {}
        if reuse_dir.is_dir():
            for path in sorted(reuse_dir.glob("*.npz")):
                for i, key in enumerate(self._shard_keys(path) or []):
                    pool[key] = (path, i)
        for g, (ids, keys) in sorted(self._groups.items()):
            if g not in keep and keys and all(k in pool for k in keys):
                self._reform_shard(g, ids, keys, pool)
                keep.add(g)
        shutil.rmtree(reuse_dir, ignore_errors=True)
        return keep

    def _reform_shard(self, index: int, ids: list[int], keys: list[ItemKey], pool: dict) -> None:
        """Shard `index` from images of earlier shards (no extraction)."""
        per_image: dict[str, list] = {name: [] for name in (*_PER_IMAGE, "rows", "row_counts", "vectors")}
        cache: dict[Path, dict] = {}
        for key in keys:
            path, i = pool[key]
            if path not in cache:
                with np.load(path, allow_pickle=False) as data:
                    cache[path] = {name: data[name] for name in data.files}
            data = cache[path]
            for name in _PER_IMAGE:
                per_image[name].append(data[name][i])
            if "row_counts" in data:
                bounds = np.concatenate([[0], np.cumsum(data["row_counts"])])
                per_image["rows"].append(data["rows"][bounds[i]:bounds[i + 1]])
                per_image["row_counts"].append(data["row_counts"][i])
            else:
                per_image["vectors"].append(data["vectors"][i])
        arrays = {name: np.array(per_image[name]) for name in _PER_IMAGE}
        arrays["ids"] = np.array(ids, dtype=np.int64)
        if per_image["row_counts"]:
            arrays["row_counts"] = np.array(per_image["row_counts"], dtype=np.int64)
            widths = [r.shape[1] for r in per_image["rows"] if len(r)]
            arrays["rows"] = np.concatenate(per_image["rows"]).astype(np.float32) if widths else np.zeros((0, 0), np.float32)
        else:
            dims = {v.shape[0] for v in per_image["vectors"] if v.shape[0]}
            dim = max(dims) if dims else 0
            arrays["vectors"] = np.stack([v if v.shape[0] == dim else np.zeros(dim, np.float32) for v in per_image["vectors"]])
        self._write_shard(index, arrays, keys)

    def _write_journal(self, completed: list[int], images_done: int) -> None:
        atomic_write_json(self.folder / JOURNAL_NAME, {"completed": completed, "images_done": images_done, "updated_at": time.time()})

    def _write_shard(self, index: int, arrays: dict[str, np.ndarray], keys: list[ItemKey]) -> None:
        arrays = dict(arrays)
        arrays["sizes"] = np.array([k[1] for k in keys], dtype=np.int64)
        arrays["mtimes"] = np.array([k[2] for k in keys], dtype=np.int64)

        def write(temp: str) -> None:
            with open(temp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(self.shard_path(index), write)
        journal = self._read_json(JOURNAL_NAME) or {"completed": [], "images_done": 0}
        self._write_journal(sorted({*journal.get("completed", []), index}), int(journal.get("images_done", 0)) + len(keys))

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
        keys = self._groups.get(index, (None, None))[1]
        if keys is None or len(keys) != len(decoded):  # no plan keys given: the images' paths only
            keys = [(d.item.stored_path, -1, -1) for d in decoded]
        self._write_shard(index, arrays, keys)

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
