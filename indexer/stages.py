"""The extraction pipeline as three stages passed in as callables (as clip-retrieval does it).

- reader: `WorkItem -> Decoded` (read bytes, sha256 unless the item brings it, decode with the
  pixel cap, optionally preprocess); runs in a pool of `workers` threads, `max_in_flight` items ahead of the consumer,
  so JPEG decoding and resizing overlap the CNN forward (PIL and torch release the GIL);
- mapper: `list[payload] -> list[result]` on one batch of decoded images (the forward + NMF +
  rows, i.e. `Extractor.local_rows`, or its aggregation);
- writer: `(group_index, decoded, results) -> None` once per group (a shard of stage 1).

Batches never straddle groups, so a resumed build forms exactly the same batches as an
uninterrupted one (batched NMF results then agree bit for bit).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descriptors.images import ImageDecodeError, decode_image, full_size

from .files import sha256_bytes, stat_key


@dataclass(frozen=True)
class WorkItem:
    id: int
    path: Path  # where to read it
    stored_path: str  # what the catalog records
    # the content's sha256 when a caller already hashed the file (`add_images`' duplicate check),
    # with the file's `stat_key` taken before that hash: the reader reuses the hash only when it
    # finds the same key after reading, i.e. the file did not change in between
    sha256: str | None = None
    hashed_key: tuple[int, int] | None = None


@dataclass
class Decoded:
    item: WorkItem
    sha256: str
    width: int | None = None
    height: int | None = None
    payload: Any = None  # what the mapper consumes (a PIL image or a preprocessed tensor)
    reason: str | None = None  # ImageDecodeError.reason when the image is unusable
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def make_reader(
    max_pixels: int, prepare: Callable[[Any], Any] | None = None, reduce_to: int | None = None
) -> Callable[[WorkItem], Decoded]:
    """A reader that never raises for a bad file: failures come back as `Decoded.reason`.

    `reduce_to`: the backbone's image size (a JPEG is decoded at the scale it needs, as the searcher
    and dff-eval decode it); the catalog still gets the full-resolution size."""

    def read(item: WorkItem) -> Decoded:
        try:
            with open(item.path, "rb") as handle:
                data = handle.read()
                key = stat_key(os.fstat(handle.fileno()))  # after reading: a change meanwhile shows
        except OSError as exc:
            return Decoded(item, "", reason="unreadable", message=f"{item.path}: cannot read ({exc.strerror or exc})")
        reuse = item.sha256 is not None and item.hashed_key == key and len(data) == key[0]
        sha = item.sha256 if reuse else sha256_bytes(data)
        try:
            # pixels: the reader's image only feeds `prepare` (the backbone's input), or comes back as is
            image = decode_image(data, max_pixels=max_pixels, reduce_to=reduce_to, pixels=prepare is not None)
        except ImageDecodeError as exc:
            return Decoded(item, sha, reason=exc.reason, message=f"{item.path}: {exc}")
        width, height = full_size(image)
        payload = prepare(image) if prepare is not None else image
        return Decoded(item, sha, width, height, payload)

    return read


def ordered_parallel_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, max_in_flight: int
) -> Iterator[Any]:
    """`map(fn, items)` in order, computed by `workers` threads at most `max_in_flight` ahead."""
    if workers <= 0:
        yield from map(fn, items)
        return
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dff-decode") as pool:
        pending: collections.deque = collections.deque()
        for item in itertools.islice(iterator, max(1, max_in_flight)):
            pending.append(pool.submit(fn, item))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(iterator, 1):
                pending.append(pool.submit(fn, item))
            yield result


def run_stages(
    groups: Sequence[tuple[int, Sequence[WorkItem]]],
    reader: Callable[[WorkItem], Decoded],
    mapper: Callable[[list[Any]], list[Any]],
    writer: Callable[[int, list[Decoded], list[Any]], None],
    *,
    workers: int,
    batch_size: int,
    on_item: Callable[[Decoded], None] | None = None,
    finisher: Callable[[list[Any]], list[Any]] | None = None,
) -> None:
    """Run reader -> mapper [-> finisher] -> writer over `groups` = [(group_index, items), ...].

    With a `finisher`, the mapper's outputs of batch i are finished in one background thread
    while the mapper runs on batch i+1 (the forward of the next batch overlaps the NMF of this one).
    """
    stream = iter_stages(groups, reader, mapper, workers=workers, batch_size=batch_size, on_item=on_item, finisher=finisher)
    with contextlib.closing(stream):  # a failing writer stops the reader threads now, not at GC
        for group_index, decoded, results in stream:
            writer(group_index, decoded, results)


def iter_stages(
    groups: Sequence[tuple[int, Sequence[WorkItem]]],
    reader: Callable[[WorkItem], Decoded],
    mapper: Callable[[list[Any]], list[Any]],
    *,
    workers: int,
    batch_size: int,
    on_item: Callable[[Decoded], None] | None = None,
    finisher: Callable[[list[Any]], list[Any]] | None = None,
) -> Iterator[tuple[int, list[Decoded], list[Any]]]:
    """`run_stages` as a generator: yields `(group_index, decoded, results)` per group (what the
    writer receives); while the consumer holds a group, the reader threads decode the next ones
    (a Ray worker yields each shard of a multi-shard call as it finishes)."""
    flat = (item for _, items in groups for item in items)
    decoded_stream = ordered_parallel_map(reader, flat, workers, max_in_flight=max(2 * batch_size, 4 * workers))
    finish_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dff-finish") if finisher else None
    try:
        for group_index, items in groups:
            decoded: list[Decoded] = []
            results: list[Any] = [None] * len(items)
            pending: list[tuple[list[int], Any]] = []
            batch: list[int] = []

            def collect(chunk: list[int], outputs: list[Any], decoded: list[Decoded] = decoded, results: list[Any] = results) -> None:
                if len(outputs) != len(chunk):
                    raise RuntimeError(f"stage returned {len(outputs)} results for {len(chunk)} images")
                for i, out in zip(chunk, outputs, strict=True):
                    results[i] = out
                    if on_item is not None:
                        on_item(decoded[i])

            def flush(batch: list[int] = batch, decoded: list[Decoded] = decoded, pending: list = pending) -> None:
                if not batch:
                    return
                chunk = list(batch)
                batch.clear()
                outputs = mapper([decoded[i].payload for i in chunk])
                for i in chunk:
                    decoded[i].payload = None  # free the pixels as soon as they are used
                if finish_pool is None:
                    collect(chunk, outputs)
                    return
                while len(pending) >= 1:  # at most one batch finishing while the next forward runs
                    done_chunk, future = pending.pop(0)
                    collect(done_chunk, future.result())
                pending.append((chunk, finish_pool.submit(finisher, outputs)))

            # pull one decoded image at a time so the forward starts as soon as a batch is ready
            for _ in range(len(items)):
                item = next(decoded_stream)
                decoded.append(item)
                if item.ok:
                    batch.append(len(decoded) - 1)
                    if len(batch) == batch_size:
                        flush()
                elif on_item is not None:
                    on_item(item)
            flush()
            for chunk, future in pending:
                collect(chunk, future.result())
            yield group_index, decoded, results
    finally:
        if finish_pool is not None:
            finish_pool.shutdown(wait=True)
