"""Build / open / search / add / remove with the real default backbone on small real photos."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from indexer_fixtures import photo, png_bomb_bytes, write_photos

from descriptors.images import decode_image

# submodules, not the package: with plain `pytest`, tests/indexer/ shadows the package's __init__
from indexer.build import build_index
from indexer.cli import main as cli_main
from indexer.errors import (
    FaissTrainingError,
    IndexerError,
    IndexExistsError,
    IndexWriteError,
    ManifestMismatchError,
    NoImagesError,
)
from indexer.manifest import build_extractor
from indexer.open_index import index_info, open_index
from indexer.update import add_images, remove_images


def _query(index, extractor, path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = extractor.local_rows([decode_image(path)])[0]
    return index.search(extractor.global_descriptor(rows, index.whitening)[None], 3)


def test_round_trip_every_image_finds_itself_first_with_cosine_one(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "index"
    summary = build_index(photo_folder, out, tiny_config, progress=False)
    assert summary.indexed == 8 and not summary.skipped
    assert sorted(p.name for p in out.iterdir()) == [
        "catalog.sqlite", "factor_codec.npy", "factor_rows.npy", "factor_rows_offsets.npy", "index.faiss",
        "manifest.json", "vectors.npy",
    ]
    assert not (tmp_path / "index.partial").exists()
    with open_index(out) as index:
        assert index.count == 8 and index.dim == 1280 and index.whitening is None
        extractor = build_extractor(index.manifest)
        # stable ids: sorted relative paths -> 0..n-1
        relative = sorted(p.relative_to(photo_folder).as_posix() for p in photo_folder.rglob("*.*"))
        assert index.paths(range(8)) == [str(photo_folder / r) for r in relative]
        for image_id, path in enumerate(index.paths(range(8))):
            scores, ids = _query(index, extractor, Path(path))
            assert ids[0, 0] == image_id
            assert scores[0, 0] == pytest.approx(1.0, abs=1e-4)
            assert scores[0, 1] < 0.99
        np.testing.assert_allclose(np.linalg.norm(index.vectors([0, 3]), axis=1), 1.0, rtol=1e-5)
        assert index.paths([-1])[0] is None and not index.vectors([-1]).any()
        name, descriptor_config, size = index.extractor_config()
        assert (name, descriptor_config.method, descriptor_config.k, size) == ("efficientnet-lite0", "nmf-v", 4, 128)


def test_bad_files_are_skipped_counted_and_listed_and_the_build_succeeds(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    good = (photo_folder / "coffee.jpg").read_bytes()
    (photo_folder / "zero.jpg").write_bytes(b"")
    (photo_folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (photo_folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (photo_folder / "notes.jpeg").write_text("this is a text file with an image extension")
    (photo_folder / "bomb.png").write_bytes(png_bomb_bytes())
    out = tmp_path / "index"
    summary = build_index(photo_folder, out, tiny_config, progress=False)
    assert summary.indexed == 8
    assert summary.skipped_reasons == {"empty": 1, "not-an-image": 2, "too-large": 1, "truncated": 1}
    assert {Path(s.path).name for s in summary.skipped} == {"zero.jpg", "truncated.jpg", "corrupt.png", "notes.jpeg", "bomb.png"}
    text = summary.format()
    assert "skipped: 5" in text and "bomb.png" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"files": 13, "indexed": 8, "skipped": summary.skipped_reasons}
    with sqlite3.connect(out / "catalog.sqlite") as db:
        statuses = dict(db.execute("SELECT path, status FROM images"))
    assert statuses["bomb.png"] == "skipped:too-large" and statuses["coffee.jpg"] == "indexed"


def test_a_first_shard_with_no_decodable_image_does_not_break_the_build(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    # "0-*" sorts first: the first shard (4 files) holds only broken files, so it has no vector width
    for i in range(4):
        (photo_folder / f"0-broken-{i}.jpg").write_bytes(b"not a picture")
    out = tmp_path / "index"
    summary = build_index(photo_folder, out, tiny_config, progress=False)
    assert summary.indexed == 8 and summary.skipped_reasons == {"not-an-image": 4}
    with open_index(out) as index:
        assert index.count == 8 and index.dim == 1280
        assert not index.vectors([0, 1, 2, 3]).any()
        np.testing.assert_allclose(np.linalg.norm(index.vectors([4, 11]), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("content", ["empty", "no-images", "only-bad-images"])
def test_a_folder_without_usable_images_is_an_error_and_writes_nothing(tmp_path: Path, tiny_config, content: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    if content == "no-images":
        (folder / "readme.txt").write_text("no images here")
    elif content == "only-bad-images":
        (folder / "a.jpg").write_bytes(b"")
        (folder / "b.png").write_bytes(b"nope")
    out = tmp_path / "index"
    with pytest.raises(NoImagesError, match="in"):
        build_index(folder, out, tiny_config, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    assert cli_main(["build", str(folder), "--out", str(out), "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_existing_output_is_refused_unless_overwrite(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "index"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(IndexExistsError, match="--overwrite"):
        build_index(photo_folder, out, tiny_config, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    build_index(photo_folder, out, tiny_config.replace(overwrite=True), progress=False)
    assert not (out / "keep.txt").exists() and open_index(out).count == 8


def test_unwritable_output_is_a_clear_error(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(IndexWriteError, match="cannot write"):
        build_index(photo_folder, blocker / "index", tiny_config, progress=False)


def test_faiss_factory_needing_more_vectors_fails_clearly_then_resumes_with_flat(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "index"
    with pytest.raises(FaissTrainingError, match=r"IVF1024,PQ64.*39,936.*has 8"):
        build_index(photo_folder, out, tiny_config.replace(faiss="IVF1024,PQ64"), progress=False)
    assert not out.exists()
    # the extraction shards survive: the retry with another factory reuses all of them
    summary = build_index(photo_folder, out, tiny_config.replace(faiss="HNSW32"), progress=False)
    assert summary.resumed_shards == 2 and summary.processed_this_run == 0 and summary.factory == "HNSW32"


def test_whitening_two_pass_build_and_reuse_on_another_index(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    config = tiny_config.replace(whiten_dim=12)
    first = build_index(photo_folder, tmp_path / "a", config, progress=False)
    assert first.dim == 12
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["whitening"]["dim"] == 12 and manifest["whitening"]["rows"] == 8 * 4
    with open_index(tmp_path / "a") as index:
        assert index.whitening is not None and index.whitening.dim == 12
        extractor = build_extractor(index.manifest)
        path = Path(index.paths([5])[0])
        scores, ids = _query(index, extractor, path)
        assert ids[0, 0] == 5 and scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    other = tmp_path / "other"
    write_photos(other, names=("chelsea", "coffee"))
    build_index(other, tmp_path / "b", config.replace(whiten_on=str(tmp_path / "a")), progress=False)
    a = np.load(tmp_path / "a" / "whitening.npz")
    b = np.load(tmp_path / "b" / "whitening.npz")
    np.testing.assert_array_equal(a["projection"], b["projection"])
    # and fitting on another folder of images
    build_index(other, tmp_path / "c", config.replace(whiten_on=str(photo_folder)), progress=False)
    c = np.load(tmp_path / "c" / "whitening.npz")
    np.testing.assert_allclose(a["projection"], c["projection"], rtol=1e-4, atol=1e-4)


def test_whiten_on_an_incompatible_index_is_refused_even_when_every_shard_is_resumed(
    photo_folder: Path, tmp_path: Path, tiny_config
) -> None:
    config = tiny_config.replace(whiten_dim=12)
    # an index of another descriptor than the default (nmf-v) to whiten on
    build_index(photo_folder, tmp_path / "nmf-vu", config.replace(descriptor="nmf-vu"), progress=False)
    other = tmp_path / "other"
    write_photos(other, names=("chelsea", "coffee"))
    # the first attempt extracts every shard, then fails on a --whiten-on that does not exist
    with pytest.raises(IndexerError, match="neither a folder"):
        build_index(other, tmp_path / "b", config.replace(whiten_on=str(tmp_path / "missing")), progress=False)
    # the rerun resumes every shard (no extraction now) and must still compare the settings
    with pytest.raises(IndexerError, match="descriptor"):
        build_index(other, tmp_path / "b", config.replace(whiten_on=str(tmp_path / "nmf-vu")), progress=False)
    assert not (tmp_path / "b").exists()


def test_add_skips_known_content_continues_ids_and_is_seen_by_a_reopen(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config, progress=False)
    before = open_index(out)
    extractor = build_extractor(before.manifest)
    new = tmp_path / "new"
    new.mkdir()
    photo("chelsea", 128).rotate(90, expand=True).save(new / "rotated.jpg")
    shutil.copy(photo_folder / "coffee.jpg", new / "coffee-copy.jpg")
    (new / "broken.jpg").write_bytes(b"")
    summary = add_images(out, [new], extractor=extractor, progress=False)
    assert summary.ids == [8] and summary.indexed == 1
    assert sorted((Path(s.path).name, s.reason) for s in summary.skipped) == [("broken.jpg", "empty"), ("coffee-copy.jpg", "duplicate")]
    assert before.count == 8  # an index opened before keeps its view
    with open_index(out) as after:
        assert after.count == 9 and after.manifest["counts"]["indexed"] == 9 and after.manifest["next_id"] == 9
        assert after.paths([8]) == [str(new / "rotated.jpg")]
        scores, ids = _query(after, extractor, new / "rotated.jpg")
        assert ids[0, 0] == 8 and scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    again = add_images(out, [new / "rotated.jpg"], extractor=extractor, progress=False)
    assert again.ids == [] and [s.reason for s in again.skipped] == ["duplicate"]
    # an upload stored inside the index directory resolves through @index/
    uploads = out / "uploads"
    uploads.mkdir()
    photo("rocket", 96).transpose(0).save(uploads / "u1.jpg")
    assert add_images(out, [uploads / "u1.jpg"], extractor=extractor, progress=False).ids == [9]
    with open_index(out) as after:
        assert after.paths([9]) == [str(uploads / "u1.jpg")]
        assert after.catalog.by_ids([9])[9].path == "@index/uploads/u1.jpg"
        coffee_id = after.paths(range(8)).index(str(photo_folder / "coffee.jpg"))
    # a collection file whose content changed: its old entry is replaced by a new id
    photo("coffee", 128).transpose(1).save(photo_folder / "coffee.jpg")
    assert add_images(out, [photo_folder / "coffee.jpg"], extractor=extractor, progress=False).ids == [10]
    with open_index(out) as after:
        assert after.count == 10 and after.paths([coffee_id, 10]) == [None, str(photo_folder / "coffee.jpg")]
        assert not after.vectors([coffee_id]).any()


def test_add_with_another_descriptor_or_backbone_setting_is_refused_naming_it(photo_folder: Path, tmp_path: Path, tiny_config, capsys) -> None:
    from descriptors.pipeline import DescriptorConfig, Extractor

    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config, progress=False)
    manifest = open_index(out).manifest
    extractor = build_extractor(manifest)
    other = Extractor(extractor.backbone, DescriptorConfig(method="gem"), image_size=128)
    with pytest.raises(ManifestMismatchError, match=r"descriptor='nmf-v'.*descriptor='gem'"):
        add_images(out, [photo_folder / "coffee.jpg"], extractor=other, progress=False)
    bigger = Extractor(extractor.backbone, extractor.config, image_size=256)
    with pytest.raises(ManifestMismatchError, match="image_size=128"):
        add_images(out, [photo_folder / "coffee.jpg"], extractor=bigger, progress=False)
    assert cli_main(["add", str(out), str(photo_folder), "--backbone", "vgg16", "--quiet"]) == 2
    assert "backbone='efficientnet-lite0'" in capsys.readouterr().err
    assert open_index(out).count == 8


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_remove_by_id_and_path(photo_folder: Path, tmp_path: Path, tiny_config, factory: str, capsys) -> None:
    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config.replace(faiss=factory), progress=False)
    index = open_index(out)
    extractor = build_extractor(index.manifest)
    coffee = photo_folder / "coffee.jpg"
    coffee_id = index.paths(range(8)).index(str(coffee))
    assert remove_images(out, ids=[0], paths=[str(coffee), "not/there.jpg"]) == 2
    assert remove_images(out, ids=[0, 12345]) == 0
    with open_index(out) as after:
        assert after.count == 6 and after.manifest["counts"]["indexed"] == 6
        _, ids = _query(after, extractor, coffee)
        assert coffee_id not in ids[0] and 0 not in ids[0]
        assert after.paths([0, coffee_id]) == [None, None]
    info = index_info(out)
    assert info["live"] == {"vectors_in_faiss": 6, "catalog_indexed": 6, "catalog_skipped": {}}
    assert cli_main(["info", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["faiss"]["factory"] == factory and printed["counts"]["indexed"] == 6
