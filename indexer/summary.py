"""`BuildSummary`: what a build / add did, printed at the end of `dff-index build|add`."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class IdRanges:
    """A set of image ids as sorted half-open ranges `[(start, stop), ...]`.

    A build's ids are 0..n-1 less its skipped files, so this holds one pair per run of indexed
    files instead of one Python int per image (a list of 10M ids is ~360 MB). Iterating, `len`,
    `in` and `tolist()` behave as on the sorted list of ids, and it compares equal to any sequence
    of the same ids (`summary.ids == [8, 9, 10]`).
    """

    __slots__ = ("ranges",)
    __hash__ = None  # type: ignore[assignment]  (compares equal to lists)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self.ranges: tuple[tuple[int, int], ...] = tuple((int(a), int(b)) for a, b in ranges if b > a)

    @classmethod
    def from_ids(cls, ids: Iterable[int] | np.ndarray) -> IdRanges:
        """The ranges of `ids` (any order; duplicates count once)."""
        values = np.unique(np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64))
        if not len(values):
            return cls()
        breaks = np.nonzero(np.diff(values) != 1)[0]
        starts = np.concatenate([values[:1], values[breaks + 1]])
        stops = np.concatenate([values[breaks] + 1, values[-1:] + 1])
        return cls(zip(starts.tolist(), stops.tolist(), strict=True))

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for start, stop in self.ranges:
            yield from range(start, stop)

    def __getitem__(self, position: int) -> int:
        """The `position`-th id in sorted order, as on the list (`summary.ids[0]`; negative from the end)."""
        if isinstance(position, bool) or not isinstance(position, int | np.integer):
            raise TypeError(f"IdRanges indices must be integers, not {type(position).__name__}")
        count = len(self)
        at = int(position) + count if position < 0 else int(position)
        if not 0 <= at < count:
            raise IndexError(f"IdRanges index {position} out of range ({count} ids)")
        for start, stop in self.ranges:
            if at < stop - start:
                return start + at
            at -= stop - start
        raise AssertionError("unreachable")

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, int | np.integer):
            return False
        at = bisect.bisect_right(self.ranges, (int(image_id), float("inf"))) - 1
        return at >= 0 and self.ranges[at][0] <= image_id < self.ranges[at][1]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdRanges):
            return self.ranges == other.ranges
        if isinstance(other, list | tuple | range | np.ndarray):
            return len(other) == len(self) and all(int(a) == b for a, b in zip(other, self, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        return f"IdRanges({list(self.ranges)})"

    def tolist(self) -> list[int]:
        return list(self)

    def as_json(self) -> list[list[int]]:
        return [[start, stop] for start, stop in self.ranges]


@dataclass
class SkippedFile:
    path: str
    reason: str  # ImageDecodeError.reason, or "duplicate" for an add of an already indexed file
    message: str


@dataclass
class InputOutcome:
    """What `add` did with one input file: `added` (its new id), `duplicate` (the id that already
    holds its content; None when that one was skipped) or `skipped` (the reason)."""

    path: str
    outcome: str
    id: int | None = None
    reason: str = ""
    message: str = ""


class ShardClock:
    """When each shard of stage 1 was finished: the start-up and the steady-state rate of a build.

    A build's overall images/s includes its start-up (loading the backbone, compiling the
    runtime; on Ray, starting the worker processes), which dominates a small collection; the
    steady rate -- images finished after the first shard / seconds between the first and the
    last -- is what a large collection runs at. Times are wall-clock (`time.time()`): a Ray
    worker stamps when it finished a shard, since its results reach the driver in bursts (Ray
    Data's output queue), and the driver's commit times would credit the work done while the
    first result was in flight to too short a window.
    """

    def __init__(self, started: float | None = None) -> None:
        self.started = time.time() if started is None else started
        self.commits: list[tuple[float, int]] = []  # (time.time() the shard was finished, its images)

    def record(self, images: int, finished_at: float | None = None) -> None:
        self.commits.append((time.time() if finished_at is None else finished_at, images))

    def wrap(self, writer):
        """`writer(group, decoded, results)`, timed per committed shard."""

        def timed(group, decoded, results):
            writer(group, decoded, results)
            self.record(len(decoded))

        return timed

    @property
    def first_shard_seconds(self) -> float | None:
        return min(t for t, _ in self.commits) - self.started if self.commits else None

    @property
    def steady_images_per_second(self) -> float | None:
        done = sorted(self.commits)  # several Ray workers finish in any order
        if len(done) < 2 or done[-1][0] <= done[0][0]:
            return None
        return sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0])


@dataclass
class BuildSummary:
    index_dir: str
    indexed: int = 0  # images that got a vector in this call
    skipped: list[SkippedFile] = field(default_factory=list)
    ids: IdRanges = field(default_factory=IdRanges)  # ids of the images indexed in this call
    seconds: float = 0.0
    processed_this_run: int = 0  # images decoded+extracted by this process (excludes resumed shards)
    resumed_shards: int = 0
    total_indexed: int = 0  # images in the index afterwards
    factory: str = ""
    dim: int = 0
    inputs: list[InputOutcome] = field(default_factory=list)  # add: one per input file, in input order
    # build: seconds from the start to the first committed shard, and the images/s after it
    # (ShardClock); None when fewer than 2 shards were extracted in this run
    first_shard_seconds: float | None = None
    steady_images_per_second: float | None = None
    commit: Any = field(default=None, repr=False)  # add: the generations.Commit written (None: nothing)
    _pending_duplicates: dict = field(default_factory=dict, repr=False)

    def skip(self, path: str | Path, reason: str, message: str, duplicate_of: int | None = None, duplicate_sha: str = "") -> None:
        """Record a skipped input (a duplicate of `duplicate_of`, or of the input with content `duplicate_sha`)."""
        self.skipped.append(SkippedFile(str(path), reason, message))
        outcome = InputOutcome(str(path), "duplicate" if reason == "duplicate" else "skipped", duplicate_of, reason, message)
        if duplicate_sha:
            self._pending_duplicates[str(path)] = duplicate_sha
        self.inputs.append(outcome)

    def outcome(self, path: str | Path, outcome: str, image_id: int | None, sha256: str = "") -> None:
        self.inputs.append(InputOutcome(str(path), outcome, image_id, message=sha256))

    def order_inputs(self, files: list[Path]) -> None:
        """Sort `inputs` into the order of `files`; a duplicate of an input added in this call gets its id."""
        added_by_sha = {o.message: o.id for o in self.inputs if o.outcome == "added"}
        for o in self.inputs:
            if o.outcome == "added":
                o.message = ""
            elif str(o.path) in self._pending_duplicates:
                o.id = added_by_sha.get(self._pending_duplicates[str(o.path)])
        position = {str(f): i for i, f in enumerate(files)}
        self.inputs.sort(key=lambda o: position.get(o.path, len(position)))

    @property
    def skipped_reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.skipped:
            out[item.reason] = out.get(item.reason, 0) + 1
        return dict(sorted(out.items()))

    @property
    def images_per_second(self) -> float:
        return self.processed_this_run / self.seconds if self.seconds > 0 else 0.0

    def format(self, max_listed: int = 20) -> str:
        lines = [
            f"index: {self.index_dir}",
            f"indexed: {self.indexed} image(s) in this run (index holds {self.total_indexed}, "
            f"dim {self.dim}, faiss {self.factory})",
        ]
        if self.resumed_shards:
            lines.append(f"resumed: {self.resumed_shards} shard(s) reused from an interrupted build")
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped_reasons.items())
            lines.append(f"skipped: {len(self.skipped)} ({reasons})")
            for item in self.skipped[:max_listed]:
                lines.append(f"  {item.reason:<13} {item.path}")
            if len(self.skipped) > max_listed:
                lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        else:
            lines.append("skipped: 0")
        timing = f"time: {self.seconds:.1f} s, {self.images_per_second:.2f} images/s"
        if self.steady_images_per_second is not None:
            timing += (
                f" (first shard after {self.first_shard_seconds:.1f} s, "
                f"then {self.steady_images_per_second:.2f} images/s)"
            )
        lines.append(timing)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "index_dir": self.index_dir,
            "indexed": self.indexed,
            # the new ids as [start, stop) pairs (IdRanges): one pair per run, not one number per image
            "id_ranges": self.ids.as_json(),
            "total_indexed": self.total_indexed,
            "skipped": self.skipped_reasons,
            "skipped_files": [vars(s) for s in self.skipped],
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "first_shard_seconds": self.first_shard_seconds,
            "steady_images_per_second": self.steady_images_per_second,
            "resumed_shards": self.resumed_shards,
            "processed_this_run": self.processed_this_run,
            "factory": self.factory,
            "dim": self.dim,
        } | ({"inputs": [vars(o) for o in self.inputs]} if self.inputs else {})
