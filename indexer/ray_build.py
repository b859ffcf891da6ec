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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import IndexConfig
from .errors import IndexerError
from .ray_cluster import cluster_resources, connect
from .stages import WorkItem

MAX_BLOCKS = 10_000
MAX_SHARDS_PER_CALL = 8


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

    def __init__(self, config: IndexConfig, stores_rows: bool, images_per_worker: float = 0.0) -> None:
        from descriptors.images import array_decoder_pays, enable_array_decoder

        from .extraction import make_extractor

        if array_decoder_pays(images_per_worker):  # each call sees a few shards only: the job's share decides
            enable_array_decoder()

        if not config.threads:
            # one torch team per worker, as wide as the CPUs Ray reserved for it
            config = config.replace(threads=max(1, int(config.cpus_per_worker)))
        if config.gpus_per_worker > 0 and config.device == "cpu":
            config = config.replace(device="cuda")
        self.config, self.stores_rows = config, stores_rows
        self.extractor = make_extractor(config)
        self.identity = ExtractorIdentity.of(self.extractor)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """One output row per shard, yielded as soon as the shard is finished: a call takes
        several shards so that the reader threads decode the next shard while this one finishes
        (as in a local build) instead of starting cold on every shard."""
        from .extraction import iter_extraction

        groups = [
            (int(g), [WorkItem(int(i), Path(p), s) for i, p, s in json.loads(str(items))])
            for g, items in zip(batch["group"], batch["items"], strict=True)
        ]
        for group, decoded, results in iter_extraction(
            groups, self.extractor, self.config, stores_rows=self.stores_rows, max_pixels=self.config.max_pixels
        ):
            payload = (group, decoded, results, self.identity, time.time())
            yield {"shard": np.array([pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)], dtype=object)}


def plan_rows(groups: Sequence[tuple[int, Sequence[WorkItem]]]) -> list[dict]:
    """The dataset Ray Data reads: one row per shard (paths as strings, JSON to keep rows flat)."""
    return [
        {"group": g, "items": json.dumps([[it.id, str(it.path), it.stored_path] for it in items])}
        for g, items in groups
    ]


def shards_per_call(n_groups: int, workers: int) -> int:
    """Shards per actor call: enough that a worker's pipeline rarely restarts (at most
    MAX_SHARDS_PER_CALL), few enough that each worker gets at least two calls to balance with."""
    return max(1, min(MAX_SHARDS_PER_CALL, -(-n_groups // (2 * workers))))


def worker_count(config: IndexConfig, n_groups: int) -> int:
    """`--workers`, or as many workers as the cluster's CPUs (and GPUs) hold; a worker that asks
    for more than the whole cluster has is an error here, not an actor that never starts."""
    resources = cluster_resources()
    fits = resources.get("CPU", 0) // config.cpus_per_worker
    if config.gpus_per_worker > 0:
        fits = min(fits, resources.get("GPU", 0) // config.gpus_per_worker)
    if fits < 1:
        raise IndexerError(
            f"each Ray worker asks for {config.cpus_per_worker:g} CPU(s) and {config.gpus_per_worker:g} GPU(s), "
            f"but the cluster has {resources.get('CPU', 0):g} CPU(s) and {resources.get('GPU', 0):g} GPU(s); "
            "lower --cpus-per-worker / --gpus-per-worker or add nodes"
        )
    wanted = config.ray_workers or int(fits)
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
    # every yielded shard is an output block of its own, so it reaches the driver (and is
    # committed) as soon as it is finished, not when the whole call is
    context.target_max_block_size = 1
    rows = plan_rows(groups)
    workers = worker_count(config, len(rows))
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS)).map_batches(
        ShardExtractor,
        batch_size=shards_per_call(len(rows), workers),
        compute=ray.data.ActorPoolStrategy(size=workers),  # `concurrency=` is deprecated since Ray 2.51
        num_cpus=config.cpus_per_worker,
        num_gpus=config.gpus_per_worker or None,
        fn_constructor_kwargs={"config": config, "stores_rows": stores_rows,
                               "images_per_worker": sum(len(items) for _, items in groups) / workers},
        batch_format="numpy",
    )
    identity = None
    committed: set[int] = set()
    try:
        for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=1):
            for payload in batch["shard"]:
                group, decoded, results, identity, finished_at = pickle.loads(payload)
                if group in committed:
                    # Ray Data retries a call whose actor died: it redoes the shards that call had
                    # already yielded (and this process committed); the redone copies are dropped
                    continue
                committed.add(group)
                writer(group, decoded, results, finished_at)
                if bar is not None:
                    bar.update(len(decoded))
    except RayError as exc:
        # the worker's own error (e.g. WeightsUnavailableError) says what to do; keep its message
        cause = getattr(exc, "cause", None) or exc
        message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise IndexerError(f"a Ray worker failed: {message}; the shards finished so far are kept") from exc
    return identity
