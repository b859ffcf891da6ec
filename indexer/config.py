"""`IndexConfig`: every setting of `dff-index build` (the CLI's flags), in one dataclass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from descriptors.images import DEFAULT_MAX_PIXELS

# 2: generations (one commit point), append-only segments, tombstones (docs/indexer.md). Format-1
# indexes are read as generation 0 and upgraded by their next add/remove/compact.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)

# `--faiss auto`: exact search (Flat) up to this many vectors; above it the configuration that
# benchmarks/bench_faiss.py measured best (recall@10 >= 0.9 at <= 5 ms/query on the 2-core
# machine, 1M vectors of dimension 256; see docs/indexer.md).
AUTO_FLAT_LIMIT = 200_000
AUTO_LARGE_SEARCH_PARAMS = "nprobe=16,k_factor_rf=16"
AUTO_HNSW_SEARCH_PARAMS = "efSearch=64"

# Descriptor settings the manifest records and a query-time extractor must reproduce.
DESCRIPTOR_METHODS = ("nmf-vu", "nmf-v", "crow", "rmac", "mac", "gem", "spoc")


@dataclass
class IndexConfig:
    """Settings of one build. Extraction settings end up in the manifest; the others are run-time."""

    backbone: str = "efficientnet-lite0"
    weights: str | None = None  # a weights file for the backbone (default: the backbone's own)
    reflection_padding: bool = False
    descriptor: str = "nmf-vu"
    k: int = 4
    max_iter: int = 100
    tol: float = 1e-4
    seed: int = 0
    image_size: int | None = None  # None: the backbone's default (efficientnet-lite0: 320, others 512)
    # PCA-whitening of the local rows: 0 = off (one pass), D > 0 = whiten to D dims (two passes).
    whiten_dim: int = 0
    whiten_on: str | None = None  # a folder of images or an index directory (its whitening.npz)
    whiten_max_rows: int = 200_000  # rows sampled (seeded) from the collection to fit the whitening
    # re-ranking rows (indexer/factor_rows.py): each image's rows projected to this dimension,
    # float16, stored beside its vector (K = 4: 2,056 bytes per image at 256); 0 = none (searches
    # on the index then cannot re-rank). Stage 1 keeps the rows (as with whitening) to fit the codec.
    rerank_dim: int = 256
    faiss: str = "auto"  # a FAISS factory string, or "auto"
    faiss_search_params: str | None = None  # e.g. "nprobe=32"; default: chosen with the factory
    faiss_train_max: int = 262_144  # vectors sampled to train IVF/PQ
    batch_size: int = 8
    workers: int | None = None  # decode threads; 0 = decode inline; None = descriptors.threads' choice
    # NMF of batch i in a background thread during the forward of batch i+1. Off: on the 2-core CPU
    # it was slower (8.7 vs 10.7 images/s, the two OpenMP teams fight); worth trying on a GPU.
    overlap_nmf: bool = False
    # compute threads (torch intra-op, FAISS, BLAS); 0 = the CPUs free of other work (descriptors.threads)
    threads: int = 0
    device: str = "cpu"
    # the NMF solver of sparse CPU items (descriptors.nmf.SOLVERS): auto = numba-mu when numba is
    # installed, else torch-sparse; numba-hals / torch-hals run HALS (faster, lower V·U mAP). Its algorithm (hals or mu) is recorded in the manifest
    # (DescriptorConfig.nmf_algorithm), which the searcher then follows; the implementation is not.
    nmf_solver: str = "auto"
    # backbone runtime (descriptors.runtimes): auto = the fastest installed for the device
    # (OpenVINO, ONNX Runtime, torch); recorded in the manifest, which the searcher then uses
    runtime: str = "auto"
    shard_size: int = 256  # images per committed shard of stage 1 (the unit of resume)
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    # Ray (`--ray [ADDRESS]`): stage 1 runs in an actor pool of `ray_workers` workers on a Ray
    # cluster; None = this process (see indexer/ray_build.py). Not part of the fingerprint: a
    # build interrupted on Ray resumes locally and the other way round (the shards are the same).
    ray_address: str | None = None  # "local" (start one), "auto", "ray://host:port", ...
    ray_workers: int = 0  # 0: the cluster's CPUs // cpus_per_worker
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.descriptor not in DESCRIPTOR_METHODS:
            raise ValueError(
                f"unknown descriptor {self.descriptor!r}; choose one of {', '.join(DESCRIPTOR_METHODS)}"
            )
        from descriptors.settings import image_size_or_default

        self.image_size = image_size_or_default(self.backbone, self.image_size)
        for name in ("k", "image_size", "batch_size", "shard_size", "max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.whiten_dim < 0:
            raise ValueError(f"whiten_dim must be >= 0 (0 = off), got {self.whiten_dim}")
        if self.rerank_dim < 0:
            raise ValueError(f"rerank_dim must be >= 0 (0 = no re-ranking rows), got {self.rerank_dim}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = chosen from the free CPUs), got {self.threads}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.ray_workers < 0 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(
                f"--workers must be >= 0, --cpus-per-worker > 0 and --gpus-per-worker >= 0; got "
                f"{self.ray_workers}, {self.cpus_per_worker}, {self.gpus_per_worker}"
            )
        # the registries' names without the registries: the driver of a Ray build never imports torch
        from descriptors.settings import RUNTIME_NAMES, SOLVER_ALGORITHMS

        if self.runtime not in ("auto", *RUNTIME_NAMES):
            raise ValueError(f"unknown runtime {self.runtime!r}; choose auto or one of {', '.join(RUNTIME_NAMES)}")
        if self.nmf_solver not in ("auto", *SOLVER_ALGORITHMS):
            raise ValueError(
                f"unknown NMF solver {self.nmf_solver!r}; choose auto or one of {', '.join(SOLVER_ALGORITHMS)}"
            )
        if self.whiten_on and not self.whiten_dim:
            raise ValueError("--whiten-on needs --whiten-dim D (D > 0)")

    def descriptor_config(self):
        """The descriptors.settings.DescriptorConfig these settings describe (no torch import)."""
        from descriptors.settings import DescriptorConfig, algorithm_of

        return DescriptorConfig(
            method=self.descriptor, k=self.k, max_iter=self.max_iter, tol=self.tol, seed=self.seed,
            nmf_algorithm=algorithm_of(self.nmf_solver),
        )

    def extraction_fingerprint(self) -> dict:
        """Settings that change the stage-1 shards: a resume with different ones starts over."""
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "reflection_padding": self.reflection_padding,
            # every descriptor setting, defaults included: a changed default also starts over
            "descriptor": dataclasses.asdict(self.descriptor_config()),
            "image_size": self.image_size,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
            "stores_rows": self.stores_rows,
        }

    @property
    def stores_rows(self) -> bool:
        """Stage 1 keeps each image's local rows (to fit the whitening or the re-ranking codec)."""
        return self.whiten_dim > 0 or self.rerank_dim > 0

    def replace(self, **changes) -> IndexConfig:
        return dataclasses.replace(self, **changes)


def ivf_nlist(n_vectors: int) -> int:
    """Inverted lists for `n_vectors`: ~sqrt(n), a power of two, 256 .. 65,536 (1M: 1024, 10M: 4096).

    More lists keep the lists short as the collection grows (a fixed IVF1024 fell from recall@10
    0.94 at 1M to 0.81 at 10M in benchmarks/bench_scale.py: 10,000 vectors per list), at the price
    of training (39 sampled vectors per list) and of assigning every vector to its list.
    """
    return 1 << max(8, min(16, round(math.log2(max(1.0, math.sqrt(n_vectors))))))


def auto_large_factory(n_vectors: int, dim: int) -> str:
    """IVF with `ivf_nlist(n)` lists + PQ64 codes + exact re-ranking (RFlat)."""
    nlist = ivf_nlist(n_vectors)
    if dim % 64:
        return "HNSW32"  # PQ64 needs a dimension divisible by 64
    return f"IVF{nlist},PQ64,RFlat"


def resolve_faiss_factory(
    factory: str, n_vectors: int, search_params: str | None, dim: int = 256
) -> tuple[str, str]:
    """`auto` -> (Flat, or the benchmarked large-scale factory, with its search parameters)."""
    if factory.strip().lower() == "auto":
        if n_vectors <= AUTO_FLAT_LIMIT:
            return "Flat", search_params or ""
        chosen = auto_large_factory(n_vectors, dim)
        default_params = AUTO_LARGE_SEARCH_PARAMS if chosen.startswith("IVF") else AUTO_HNSW_SEARCH_PARAMS
        return chosen, search_params or default_params
    return factory, search_params or ""
