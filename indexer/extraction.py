"""Glue between the descriptor core and the stages: reader preparation and the mapper."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .config import IndexConfig
from .stages import WorkItem, iter_stages, make_reader


def make_extractor(config: IndexConfig):
    """The `descriptors.pipeline.Extractor` a build with `config` uses."""
    from descriptors.backbones import load_backbone
    from descriptors.nmf import set_sparse_solver
    from descriptors.nmf import warm_up as warm_up_nmf
    from descriptors.pipeline import Extractor
    from descriptors.threads import setup_threads

    setup_threads(config.threads)
    set_sparse_solver(config.nmf_solver)
    # numba's import and kernel load (from its disk cache) took 5-19 s of a 4-photo build on the
    # loaded 2-core machine: start it now, beside the backbone's load (timm, OpenVINO), instead of
    # in the first batch's NMF; LLVM's linking runs outside the GIL
    threading.Thread(target=warm_up_nmf, name="dff-nmf-warm-up", daemon=True).start()
    from descriptors.runtimes import use_runtime

    backbone = load_backbone(
        config.backbone,
        weights=config.weights,
        device=config.device,
        reflection_padding=config.reflection_padding,
    )
    use_runtime(backbone, config.runtime)
    return Extractor(backbone, config.descriptor_config(), image_size=config.image_size)


def extraction_callables(extractor, stores_rows: bool) -> tuple[Callable[[Any], Any], Callable, Callable]:
    """(prepare for the reader threads, forward for the main thread, finish for the finisher thread).

    `finish` (CroW + NMF + rows) returns local rows `(n, C)` when `stores_rows` (whitening to be fit later), else
    the final global descriptor (no whitening) so that shards stay small.
    """

    # Same computation as `extractor.local_rows(images)` with no boxes, split so that the whole
    # preprocessing (PIL resize + the table-lookup normalization, numpy only) runs in the reader
    # threads: torch ops in those threads would start their own OpenMP teams and fight the forward
    # for the cores (measured on 2 cores: 6.2 images/s with torch normalization in 2 reader
    # threads); on the main thread the normalization cost ~3 ms/image in series with the forward.
    from descriptors.pipeline import local_descriptors

    backbone, image_size, descriptor_config = extractor.backbone, extractor.image_size, extractor.config

    def prepare(image: Any) -> Any:
        return backbone.preprocess(image, image_size)

    def forward(tensors: Sequence[Any]) -> list[Any]:
        return backbone.extract(list(tensors))

    def finish(acts: Sequence[Any]) -> list[np.ndarray]:
        rows = local_descriptors(list(acts), descriptor_config)
        if stores_rows:
            return [np.asarray(r, dtype=np.float32) for r in rows]
        return [np.asarray(extractor.global_descriptor(r, None), dtype=np.float32) for r in rows]

    return prepare, forward, finish


def decode_workers(config: IndexConfig) -> int:
    """`config.workers`, or the decode threads descriptors.threads chooses for `config.threads`."""
    if config.workers is not None:
        return config.workers
    from descriptors.threads import choose_threads

    return choose_threads(config.threads).decode


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="img", desc=desc, disable=None if enabled else True, dynamic_ncols=True
    )


def run_extraction(
    groups: Sequence[tuple[int, Sequence[WorkItem]]],
    extractor,
    writer: Callable[[int, list, list], None],
    config: IndexConfig,
    *,
    stores_rows: bool,
    max_pixels: int,
    bar=None,
) -> None:
    """reader -> mapper [-> finisher] -> writer over `groups`, the one wiring of `build` and `add`.

    The mapper is the forward (+ NMF and rows unless `config.overlap_nmf` moves those to the
    finisher thread); `writer(group_index, decoded, results)` receives the rows (`stores_rows`)
    or the final vectors; `bar` (a tqdm) advances once per image.
    """
    stream = iter_extraction(groups, extractor, config, stores_rows=stores_rows, max_pixels=max_pixels, bar=bar)
    with contextlib.closing(stream):  # a failing writer stops the reader threads now, not at GC
        for group_index, decoded, results in stream:
            writer(group_index, decoded, results)


def iter_extraction(
    groups: Sequence[tuple[int, Sequence[WorkItem]]],
    extractor,
    config: IndexConfig,
    *,
    stores_rows: bool,
    max_pixels: int,
    bar=None,
) -> Iterator[tuple[int, list, list]]:
    """`run_extraction` as a generator of `(group_index, decoded, results)` (stages.iter_stages).
    A call of `images.array_decoder_pays` images decodes JPEGs with the array decoder (same pixels)."""
    from descriptors.images import array_decoder_pays, enable_array_decoder

    if array_decoder_pays(sum(len(items) for _, items in groups)):
        enable_array_decoder()
    prepare, forward, finish = extraction_callables(extractor, stores_rows)
    mapper, finisher = (forward, finish) if config.overlap_nmf else (lambda images: finish(forward(images)), None)
    yield from iter_stages(
        groups,
        make_reader(max_pixels, prepare, reduce_to=extractor.image_size),
        mapper,
        workers=decode_workers(config),
        batch_size=config.batch_size,
        on_item=None if bar is None else (lambda _: bar.update(1)),
        finisher=finisher,
    )
