"""The reader -> mapper -> writer stages with plain callables (order, batching, bad files)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from indexer_fixtures import photo, png_bomb_bytes

from indexer.stages import WorkItem, make_reader, ordered_parallel_map, run_stages


def test_ordered_parallel_map_keeps_order_and_uses_several_threads() -> None:
    threads = set()

    def slow_square(x: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.01 * (x % 3))  # later items often finish first
        return x * x

    assert list(ordered_parallel_map(slow_square, range(30), workers=4, max_in_flight=8)) == [x * x for x in range(30)]
    assert len(threads) > 1
    assert list(ordered_parallel_map(slow_square, range(5), workers=0, max_in_flight=1)) == [0, 1, 4, 9, 16]


def test_batches_never_straddle_groups_and_failures_skip_the_mapper(tmp_path: Path) -> None:
    items = [WorkItem(i, tmp_path / f"{i}.bin", f"{i}.bin") for i in range(10)]
    reader_outputs = {}

    def reader(item: WorkItem):
        from indexer.stages import Decoded

        failed = item.id in (2, 7)
        reader_outputs[item.id] = failed
        return Decoded(item, "sha", 1, 1, payload=item.id, reason="truncated" if failed else None)

    batches, written = [], []
    run_stages(
        [(0, items[:6]), (1, items[6:])],
        reader,
        lambda payloads: (batches.append(list(payloads)), [p * 10 for p in payloads])[1],
        lambda g, decoded, results: written.append((g, [d.item.id for d in decoded], results)),
        workers=2,
        batch_size=2,
    )
    assert batches == [[0, 1], [3, 4], [5], [6, 8], [9]]
    assert written == [(0, [0, 1, 2, 3, 4, 5], [0, 10, None, 30, 40, 50]), (1, [6, 7, 8, 9], [60, None, 80, 90])]


def test_reader_reports_each_kind_of_bad_file_with_its_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    photo("coffee", 64).save(good)
    data = good.read_bytes()
    files = {
        "good.jpg": None,
        "empty.jpg": b"",
        "text.jpg": b"hello, not an image",
        "truncated.jpg": data[: len(data) // 2],
        "bomb.png": png_bomb_bytes(),
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    read = make_reader(max_pixels=64_000_000)
    reasons = {name: read(WorkItem(0, tmp_path / name, name)).reason for name in files}
    assert reasons == {
        "good.jpg": None, "empty.jpg": "empty", "text.jpg": "not-an-image", "truncated.jpg": "truncated", "bomb.png": "too-large",
    }
    missing = read(WorkItem(0, tmp_path / "gone.jpg", "gone.jpg"))
    assert missing.reason == "unreadable"
    ok = read(WorkItem(0, good, "good.jpg"))
    assert (ok.width, ok.height) == photo("coffee", 64).size and len(ok.sha256) == 64


def test_resize_in_reader_then_preprocess_equals_preprocess(backbone) -> None:
    import torch
    from PIL import Image

    from descriptors.backbones import resize_for_backbone

    base = photo("astronaut", 512)
    for size in [(301, 199), (640, 480), (2000, 300), (90, 700), (512, 513)]:  # down, up, capped panoramas
        image = base.resize(size)
        for image_size in (128, 512):
            direct = backbone.preprocess(image, image_size)
            resized = resize_for_backbone(image, image_size, backbone.max_side_ratio)
            assert isinstance(resized, Image.Image)
            assert torch.equal(backbone.preprocess(resized, image_size), direct), (size, image_size)


def test_a_finisher_thread_gives_the_same_results_in_the_same_order(tmp_path: Path) -> None:
    from indexer.stages import Decoded

    items = [WorkItem(i, tmp_path / f"{i}.bin", f"{i}.bin") for i in range(11)]

    def reader(item: WorkItem) -> Decoded:
        return Decoded(item, "sha", 1, 1, payload=item.id, reason="empty" if item.id == 4 else None)

    def forward(payloads: list[int]) -> list[int]:
        return [p + 100 for p in payloads]

    def finish(acts: list[int]) -> list[int]:
        time.sleep(0.01 * (acts[0] % 2))  # finishing takes a while: the next forward overlaps it
        return [a * 2 for a in acts]

    runs = []
    for finisher, mapper in ((finish, forward), (None, lambda p: finish(forward(p)))):
        written = []
        run_stages([(0, items[:5]), (1, items[5:])], reader, mapper,
                   lambda g, decoded, results, written=written: written.append((g, results)),
                   workers=2, batch_size=2, finisher=finisher)
        runs.append(written)
    assert runs[0] == runs[1] == [(0, [200, 202, 204, 206, None]), (1, [210, 212, 214, 216, 218, 220])]


def test_reader_reuses_a_given_sha256_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    import hashlib

    from indexer.files import hash_file

    path = tmp_path / "a.jpg"
    photo("coffee", 64).save(path)
    sha, key = hash_file(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() and key[0] == path.stat().st_size
    read = make_reader(max_pixels=64_000_000)
    fake = "f" * 64  # a value the reader cannot compute: seeing it back proves it was not re-hashed
    assert read(WorkItem(0, path, "a.jpg", fake, key)).sha256 == fake
    assert read(WorkItem(0, path, "a.jpg")).sha256 == sha  # no hash given: computed
    photo("chelsea", 64).save(path)  # changed after the pre-scan: the stale hash is not reused
    changed = read(WorkItem(0, path, "a.jpg", fake, key))
    assert changed.ok and changed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_built_vectors_equal_the_plain_image_by_image_computation(tmp_path: Path) -> None:
    """The build's pipeline (normalization in the decode threads, forwards side by side on the
    compute threads, batched NMF) changes no value: each vector equals decode -> torch
    normalization -> one forward -> NMF rows -> aggregation of that image alone."""
    import numpy as np
    import torch
    from indexer_fixtures import write_variants

    from descriptors.backbones import resize_for_backbone
    from descriptors.images import decode_image
    from descriptors.pipeline import local_descriptors
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.extraction import make_extractor

    paths = write_variants(tmp_path / "photos", 6, size=150)
    config = IndexConfig(image_size=96, k=4, max_iter=50, batch_size=4, workers=2, shard_size=4, threads=2)
    extractor = make_extractor(config)
    build_index(tmp_path / "photos", tmp_path / "index", config, progress=False, extractor=extractor)
    built = np.load(tmp_path / "index" / "vectors.npy")
    backbone = extractor.backbone
    mean, std = torch.tensor(backbone.mean).view(3, 1, 1), torch.tensor(backbone.std).view(3, 1, 1)
    for image_id, path in enumerate(sorted(paths)):
        image = resize_for_backbone(decode_image(path, reduce_to=96), 96, backbone.max_side_ratio)
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        x = (rgb.permute(2, 0, 1).float().div_(255.0) - mean) / std
        with torch.inference_mode():
            act = backbone.forward(x[None]).float()[0]
        rows = local_descriptors([act], extractor.config)[0]
        np.testing.assert_allclose(built[image_id], extractor.global_descriptor(rows, None), rtol=0, atol=1e-6)


def test_a_long_job_decodes_with_the_array_decoder_and_builds_the_same_index(tmp_path: Path, monkeypatch) -> None:
    """A build of `images.array_decoder_pays` images enables torchvision's JPEG decoder (once the
    job is long enough to pay for its import); its pixels are PIL's, so the index is the same."""
    import numpy as np
    from indexer_fixtures import write_variants

    from descriptors import images
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.extraction import make_extractor

    write_variants(tmp_path / "photos", 6, size=150)
    config = IndexConfig(image_size=96, k=4, max_iter=50, batch_size=4, workers=2, shard_size=4, threads=2)
    extractor = make_extractor(config)
    monkeypatch.setattr(images, "_array_decoder", [])  # whatever another test enabled: restored after
    monkeypatch.setattr(images, "ARRAY_DECODER_MIN_IMAGES", 7)  # one more than the job: PIL
    build_index(tmp_path / "photos", tmp_path / "pil", config, progress=False, extractor=extractor)
    assert images._array_decoder == []
    monkeypatch.setattr(images, "ARRAY_DECODER_MIN_IMAGES", 6)  # the job's size: the array decoder
    build_index(tmp_path / "photos", tmp_path / "array", config, progress=False, extractor=extractor)
    assert images._array_decoder, "a job of ARRAY_DECODER_MIN_IMAGES images enables the array decoder"
    np.testing.assert_array_equal(np.load(tmp_path / "array" / "vectors.npy"), np.load(tmp_path / "pil" / "vectors.npy"))
