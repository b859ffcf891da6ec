"""Stage 1 of `dff-index build --ray`: the local builder's stage functions in a Ray Data actor pool.

Ray Data reads the build's file list (one row per shard: the shard's index and its files) and
`map_batches` hands each row to a `ShardExtractor` actor. An actor loads the backbone once and
runs `extraction.run_extraction` -- the same reader -> mapper [-> finisher] chain, the same
batches -- on its shard, and returns the decoded metadata and the rows (or vectors). The writer
stays in the driver: it is `PartialBuild.commit_shard`, exactly as in a local build, so the
journal has one writer, the shards are the local builder's files, a killed job resumes at the
first unfinished shard (locally or on Ray), and stage 2 (whitening, FAISS, catalog, manifest)
runs unchanged in the driver.

Only the workers read the images: every node must see the input folder at the same path (a
shared filesystem). The driver alone writes `OUT.partial/` and `OUT`.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import IndexConfig
from .errors import IndexerError
from .ray_cluster import cluster_cpus, connect
from .stages import WorkItem

MAX_BLOCKS = 10_000


@dataclass(frozen=True)
class BackboneIdentity:
    """What the manifest records of the workers' backbone (`make_manifest` reads these fields)."""

    name: str
    layer: str
    channels: int
    stride: int
    weights_sha256: str
    runtime: str


@dataclass(frozen=True)
class ExtractorIdentity:
    """The workers' extractor as stage 2 sees it (manifest, `--whiten-on INDEX` check).

    Stage 2 in the driver needs only the extractor's identity, not the extractor: loading the
    backbone and compiling its runtime in the driver after stage 1 cost ~13 s on the 2-core
    machine, serially, on top of the workers' own start-up. It is also the workers' runtime, which
    the manifest must record (a GPU worker's differs from a CPU driver's).
    """

    backbone: BackboneIdentity
    image_size: int
    config: Any  # descriptors.pipeline.DescriptorConfig

    @classmethod
    def of(cls, extractor) -> ExtractorIdentity:
        b = extractor.backbone
        backbone = BackboneIdentity(
            b.name, b.layer, int(b.channels), int(b.stride), b.weights_sha256, getattr(b, "runtime", "torch")
        )
        return cls(backbone, int(extractor.image_size), extractor.config)


class ShardExtractor:
    """A Ray Data actor: one backbone per worker; one shard of work items per call."""

    def __init__(self, config: IndexConfig, stores_rows: bool) -> None:
        from .extraction import make_extractor

        if not config.threads:
            # one torch team per worker, as wide as the CPUs Ray reserved for it
            config = config.replace(threads=max(1, int(config.cpus_per_worker)))
        if config.gpus_per_worker > 0 and config.device == "cpu":
            config = config.replace(device="cuda")
        self.config, self.stores_rows = config, stores_rows
        self.extractor = make_extractor(config)
        self.identity = ExtractorIdentity.of(self.extractor)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .extraction import run_extraction

        groups = [
            (int(g), [WorkItem(int(i), Path(p), s) for i, p, s in json.loads(str(items))])
            for g, items in zip(batch["group"], batch["items"], strict=True)
        ]
        done: list[bytes] = []

        def collect(group: int, decoded: list, results: list) -> None:
            payload = (group, decoded, results, self.identity, time.time())
            done.append(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))

        run_extraction(
            groups, self.extractor, collect, self.config,
            stores_rows=self.stores_rows, max_pixels=self.config.max_pixels,
        )
        return {"shard": np.array(done, dtype=object)}


def plan_rows(groups: Sequence[tuple[int, Sequence[WorkItem]]]) -> list[dict]:
    """The dataset Ray Data reads: one row per shard (paths as strings, JSON to keep rows flat)."""
    return [
        {"group": g, "items": json.dumps([[it.id, str(it.path), it.stored_path] for it in items])}
        for g, items in groups
    ]


def worker_count(config: IndexConfig, n_groups: int) -> int:
    wanted = config.ray_workers or max(1, int(cluster_cpus() // config.cpus_per_worker))
    return max(1, min(wanted, n_groups))


def run_extraction_on_ray(
    groups: Sequence[tuple[int, Sequence[WorkItem]]],
    writer: Callable[[int, list, list, float], None],
    config: IndexConfig,
    *,
    stores_rows: bool,
    bar=None,
) -> ExtractorIdentity | None:
    """Extract `groups` on the Ray cluster; `writer(group, decoded, results, finished_at)` runs here
    per shard (`finished_at`: the worker's `time.time()` when it finished the shard).

    Returns the workers' `ExtractorIdentity` (None when `groups` is empty).
    """
    connect(config.ray_address)
    import ray.data
    from ray.exceptions import RayError

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images; Ray's would count rows of shards
    context.enable_operator_progress_bars = False
    rows = plan_rows(groups)
    workers = worker_count(config, len(rows))
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS)).map_batches(
        ShardExtractor,
        batch_size=1,
        concurrency=workers,
        num_cpus=config.cpus_per_worker,
        num_gpus=config.gpus_per_worker or None,
        fn_constructor_kwargs={"config": config, "stores_rows": stores_rows},
        batch_format="numpy",
    )
    identity = None
    try:
        for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=1):
            for payload in batch["shard"]:
                group, decoded, results, identity, finished_at = pickle.loads(payload)
                writer(group, decoded, results, finished_at)
                if bar is not None:
                    bar.update(len(decoded))
    except RayError as exc:
        # the worker's own error (e.g. WeightsUnavailableError) says what to do; keep its message
        cause = getattr(exc, "cause", None) or exc
        message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise IndexerError(f"a Ray worker failed: {message}; the shards finished so far are kept") from exc
    return identity
