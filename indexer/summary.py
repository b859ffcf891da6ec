"""`BuildSummary`: what a build / add did, printed at the end of `dff-index build|add`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SkippedFile:
    path: str
    reason: str  # ImageDecodeError.reason, or "duplicate" for an add of an already indexed file
    message: str


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
        lines.append(f"time: {self.seconds:.1f} s, {self.images_per_second:.2f} images/s")
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
            "resumed_shards": self.resumed_shards,
            "processed_this_run": self.processed_this_run,
            "factory": self.factory,
            "dim": self.dim,
        }
