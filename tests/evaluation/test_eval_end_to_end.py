"""`dff-eval` end to end: synthetic datasets in the official layouts, and the shared Paris subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_synthetic import write_class_folders, write_tiny_imagenet

from evaluation.cli import main

RESULT_KEYS = {"method", "backbone", "qe", "rerank"}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main([*argv, "--no-progress", "--threads", "1"])
    return code, capsys.readouterr().out


def _npz_files(cache: Path) -> set[Path]:
    return set(cache.rglob("*.npz"))


@pytest.mark.slow  # ~20 s on a busy 2-core machine: 18 forwards and 7 methods x 2 QE sizes
def test_instance_end_to_end_on_official_layout(synthetic_paris: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    argv = ["instance", "--dataset", "paris6k", "--root", str(synthetic_paris), "--image-size", "96"]
    argv += [
        "--cache-dir",
        str(cache),
        "--qe",
        "0,2",
        "--json",
        str(out / "r.json"),
        "--markdown",
        str(out / "r.md"),
    ]
    code, stdout = _run(argv, capsys)
    assert code == 0
    report = json.loads((out / "r.json").read_text())
    assert set(report) == {"dataset", "protocol", "coverage", "results"}
    assert report["coverage"] == {"queries": 3, "queries_total": 3, "images": 15, "images_total": 15}
    assert len(report["results"]) == 7 * 2
    for result in report["results"]:
        assert set(result) == RESULT_KEYS | {"map"} | ({"expansion"} if result["qe"] else set())
        # three distinct textures vs noise: every method retrieves every positive first
        assert result["map"] >= 0.9, result
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| nmf-vu |" in (out / "r.md").read_text()
    assert "queries 3/3, images 15/15" in stdout
    # one forward per database image + one per query crop (the baselines' box), shared by all methods
    files = _npz_files(cache)
    assert len(files) == 15 + 3
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    code, _ = _run([*argv[:9], "--methods", "mac,nmf-v"], capsys)
    assert code == 0
    assert {f: f.stat().st_mtime_ns for f in _npz_files(cache)} == mtimes  # all from the cache


def test_subset_mode_and_leave_one_out(synthetic_paris: Path, tmp_path: Path, capsys) -> None:
    (synthetic_paris / "jpg" / "paris_rings_000000.jpg").unlink()  # a query
    (synthetic_paris / "jpg" / "paris_general_000001.jpg").unlink()  # a distractor
    common = ["--dataset", "paris6k", "--root", str(synthetic_paris), "--image-size", "96"]
    common += ["--cache-dir", str(tmp_path / "cache"), "--methods", "mac,nmf-v"]
    code, stdout = _run(["instance", *common, "--json", str(tmp_path / "std.json")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "std.json").read_text())["coverage"] == {
        "queries": 2,
        "queries_total": 3,
        "images": 13,
        "images_total": 15,
    }
    assert "queries 2/3, images 13/15" in stdout
    code, _ = _run(
        ["instance", *common, "--protocol", "landmark-loo", "--json", str(tmp_path / "loo.json")], capsys
    )
    assert code == 0
    loo = json.loads((tmp_path / "loo.json").read_text())
    # every present positive is a query: 4 + 4 + 3 of the 12 positives
    assert loo["coverage"] == {"queries": 11, "queries_total": 12, "images": 13, "images_total": 15}
    assert all(r["map"] >= 0.9 for r in loo["results"])


def test_semantic_end_to_end(tmp_path: Path, capsys) -> None:
    write_tiny_imagenet(tmp_path / "tin", n_per_class=6)
    write_class_folders(tmp_path / "folders", n_per_class=6)
    for dataset, root in (("tiny-imagenet", "tin"), ("folders", "folders")):
        out = tmp_path / f"{dataset}.json"
        argv = ["semantic", "--dataset", dataset, "--root", str(tmp_path / root), "--image-size", "96"]
        argv += [
            "--cache-dir",
            str(tmp_path / "cache"),
            "--methods",
            "mac,crow,nmf-v",
            "--at",
            "5",
            "--json",
            str(out),
        ]
        code, stdout = _run(argv, capsys)
        assert code == 0, stdout
        report = json.loads(out.read_text())
        assert report["coverage"] == {"queries": 15, "queries_total": 15, "images": 18, "images_total": 18}
        assert [r["method"] for r in report["results"]] == ["mac", "crow", "nmf-v"]
        assert all(r["at"] == 5 and r["map"] >= 0.8 for r in report["results"]), report


def test_localize_end_to_end_on_planted_boxes(tmp_path: Path, capsys) -> None:
    write_tiny_imagenet(tmp_path / "tin", n_per_class=5)
    out = tmp_path / "loc.json"
    argv = ["localize", "--dataset", "tiny-imagenet", "--root", str(tmp_path / "tin")]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    code, stdout = _run(argv, capsys)
    assert code == 0, stdout
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"nmf-colocalize", "sliding-window-mac", "full-image"}
    assert results["nmf-colocalize"]["pairs"] == 3 * 5 * 4
    # the textured patch on noise is found: most predicted boxes overlap the planted one well
    assert results["nmf-colocalize"]["mean_iou"] > 0.5


def test_errors_are_specific(tmp_path: Path, capsys) -> None:
    code = main(
        ["instance", "--dataset", "rparis6k", "--root", str(tmp_path), "--cache-dir", str(tmp_path / "c")]
    )
    assert code == 2
    assert "gnd_rparis6k.pkl" in capsys.readouterr().err
    code = main(["instance", "--dataset", "paris6k", "--root", str(tmp_path), "--methods", "mac,sift"])
    assert code == 2
    assert "unknown method(s) sift" in capsys.readouterr().err


@pytest.mark.shared_data
@pytest.mark.slow
def test_shared_paris_subset_end_to_end(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rparis.json"
    argv = ["instance", "--dataset", "rparis6k", "--root", str(shared_data / "paris6k-subset")]
    argv += [
        "--image-size",
        "128",
        "--methods",
        "mac,nmf-v",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(out),
    ]
    code, stdout = _run(argv, capsys)
    assert code == 0, stdout
    report = json.loads(out.read_text())
    assert report["coverage"] == {"queries": 12, "queries_total": 70, "images": 397, "images_total": 6322}
    for result in report["results"]:
        assert set(result) == RESULT_KEYS | {"map_easy", "map_medium", "map_hard"}
        # far above chance (positives are a few % of the gallery) even at 128 px
        assert result["map_medium"] > 0.3, result


def test_sweep_rerank_and_expansions_report_each_method_at_its_best(synthetic_paris: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep.json"
    argv = ["instance", "--dataset", "paris6k", "--root", str(synthetic_paris), "--methods", "crow,nmf-v"]
    argv += ["--image-size", "64,96", "--k", "2,4", "--qe", "0,2", "--rerank", "0,5"]
    argv += ["--expansion", "average,alpha,diffusion", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    code, stdout = _run(argv, capsys)
    assert code == 0, stdout
    report = json.loads(out.read_text())
    # per size: crow once (no K), nmf-v per K; per method: 2 rerank x (QE 0 + QE 2 x 3 expansions)
    assert len(report["results"]) == 2 * (1 + 2) * 2 * (1 + 3)
    nmf = [r for r in report["results"] if r["method"] == "nmf-v"]
    assert {(r["image_size"], r["k"]) for r in nmf} == {(64, 2), (64, 4), (96, 2), (96, 4)}
    assert {r.get("expansion") for r in nmf} == {None, "average", "alpha", "diffusion"}
    assert all("k" not in r for r in report["results"] if r["method"] == "crow")
    # best: one row per (method, qe, expansion, rerank), the highest mAP over the sweep
    assert len(report["best"]) == 2 * 2 * (1 + 3)
    for best in report["best"]:
        group = [
            r["map"] for r in report["results"]
            if (r["method"], r["qe"], r.get("expansion"), r["rerank"]) == (best["method"], best["qe"], best.get("expansion"), best["rerank"])
        ]
        assert best["map"] == max(group)
    assert "each method at its best image size and K" in stdout
