"""dff-analyze end to end (in-process `main`, real backbone, real files): PNG + JSON with the keys
the issue names, and clear errors that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from descriptors.sample_photos import write_sample_photos

PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_sample_photos(tmp_path_factory.mktemp("photos"), PHOTOS)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_concepts_on_files(photos, tmp_path):
    out = tmp_path / "out"
    assert main(["concepts", *map(str, photos), "--k", "3", "--image-size", "64", "--out", str(out),
                 "--json", str(tmp_path / "copy.json"), "--no-progress"]) == 0
    payload = _read(out / "concepts.json")
    assert set(payload) >= {"images", "k", "heatmaps_file"} and payload["k"] == 3
    assert _read(tmp_path / "copy.json") == payload
    assert [Path(i["path"]).name for i in payload["images"]] == [p.name for p in photos]
    heatmaps = np.load(payload["heatmaps_file"])
    for i, image in enumerate(payload["images"]):
        assert len(image["strengths"]) == 3 and sum(image["strengths"]) == pytest.approx(1.0)
        assert heatmaps[image["heatmaps_key"]].shape == (3, *image["grid"])
        np.testing.assert_allclose(heatmaps[f"image_{i}"], np.array(image["heatmaps"]), rtol=1e-6)
    assert (out / "concepts.png").stat().st_size > 1000


def test_concepts_from_an_index(photos, tmp_path):
    from indexer import IndexConfig, build_index

    index = tmp_path / "index"
    build_index(photos[0].parent, index, IndexConfig(image_size=96, k=2, workers=0), progress=False)
    out = tmp_path / "out"
    assert main(["concepts", "--index", str(index), "--ids", "0,2", "--k", "2", "--out", str(out), "--no-progress"]) == 0
    payload = _read(out / "concepts.json")
    assert len(payload["images"]) == 2 and payload["image_size"] == 96
    # an id the index does not hold: a clear error
    assert main(["concepts", "--index", str(index), "--ids", "0,99", "--out", str(tmp_path / "bad")]) == 2


def test_concepts_errors(photos, tmp_path, capsys):
    assert main(["concepts", "--out", str(tmp_path / "o")]) == 2
    assert "give image files" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["concepts", str(photos[0]), str(bad), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "concepts.json").exists()
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["concepts", str(photos[0]), "--out", str(afile)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["concepts", str(photos[0]), "--layer", "no.such", "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "unknown layer" in capsys.readouterr().err


def test_rank_with_random_comparison(photos, tmp_path):
    out = tmp_path / "out"
    layers = "model.bn1,model.bn2"
    assert main(["rank", "--images", str(photos[0].parent), "--layers", layers, "--ks", "1,2,4",
                 "--compare", "random", "--image-size", "64", "--max-iter", "50", "--out", str(out), "--no-progress"]) == 0
    payload = _read(out / "rank.json")
    for key in ("layers", "random"):
        assert list(payload[key]) == layers.split(",")
        for curve in payload[key].values():
            assert curve["k"] == [1, 2, 4] and len(curve["rel_error"]) == 3
            assert all(0 <= e <= 1 for e in curve["rel_error"])
            assert curve["rel_error"][2] < curve["rel_error"][0]
    assert (out / "rank.png").is_file()


def test_rank_errors(tmp_path, capsys):
    assert main(["rank", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "image folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["rank", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["rank", "--images", str(tmp_path / "empty"), "--layers", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rank", "--images", ".", "--ks", "0,2", "--out", str(tmp_path / "o")])
    assert main(["rank", "--images", str(tmp_path / "empty")]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["rank", "--list-layers"]) == 0
    assert "model.blocks.6.0.bn1" in capsys.readouterr().out.splitlines()


def test_weights_json_keys(tmp_path):
    out = tmp_path / "out"
    layers = "model.conv_stem,model.conv_head"
    assert main(["weights", "--layers", layers, "--out", str(out), "--no-progress"]) == 0
    payload = _read(out / "weights.json")
    assert [layer["name"] for layer in payload["layers"]] == layers.split(",")
    for layer in payload["layers"]:
        assert set(layer) >= {"name", "shape", "definition", "singular_values", "mp_ks_statistic"}
        values = layer["singular_values"]
        assert values == sorted(values, reverse=True)
        assert layer["definition"] == "reshaped"
    head = payload["layers"][1]
    assert head["shape"] == [1280, 320, 1, 1] and len(head["singular_values"]) >= 64
    for name in ("weights_spectra.png", "weights_mp.png", "weights_filters.png"):
        assert (out / name).is_file()
    assert main(["weights", "--definition", "fft", "--fft-size", "8", "--layers", "model.conv_stem",
                 "--out", str(tmp_path / "fft"), "--no-progress"]) == 0
    fft = _read(tmp_path / "fft" / "weights.json")["layers"][0]
    assert fft["definition"] == "fft" and len(fft["singular_values"]) >= 64
    assert main(["weights", "--layers", "model.bn1", "--out", str(tmp_path / "bad")]) == 2


def test_coupled_small_case_study(tmp_path):
    out = tmp_path / "out"
    assert main(["coupled", "--ranks", "2,6", "--train-fractions", "0.25,0.5", "--epochs", "1", "--equal-steps", "--max-iter", "30",
                 "--out", str(out), "--no-progress"]) == 0
    payload = _read(out / "coupled.json")
    assert [run["train_fraction"] for run in payload["runs"]] == [0.25, 0.5]
    assert [run["epochs"] for run in payload["runs"]] == [4, 2]  # --equal-steps: epochs x 1/fraction
    for run in payload["runs"]:
        assert set(run) >= {"train_fraction", "test_accuracy", "ranks", "rmse"}
        assert run["ranks"] == [2, 6] and run["rmse"][1] < run["rmse"][0]
        assert 0.1 < run["test_accuracy"] <= 1.0
        assert set(run["singular_values"]) == {"relu1", "relu2", "relu3"}
    assert (out / "coupled.png").is_file()
    assert main(["coupled", "--model", "resnet", "--out", str(tmp_path / "bad")]) == 2
