"""`BuildSummary`: what a build / add did, printed at the end of `dff-index build|add`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    ids: list[int] = field(default_factory=list)  # ids of the images indexed in this call
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
