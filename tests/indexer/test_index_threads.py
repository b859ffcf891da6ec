"""dff-index's thread flags: `--threads` sets torch/FAISS/BLAS, `--verbose` prints the choice."""

from __future__ import annotations

from pathlib import Path

from indexer.cli import main as cli_main


def test_build_with_threads_and_verbose_prints_the_settings_and_uses_them(photo_folder: Path, tmp_path: Path, capsys) -> None:
    import torch

    previous = torch.get_num_threads()
    out = tmp_path / "index"
    try:
        args = ["build", str(photo_folder), "--out", str(out), "--image-size", "96", "--max-iter", "20"]
        assert cli_main([*args, "--threads", "1", "--verbose", "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    err = capsys.readouterr().err
    assert "dff-index build: threads: compute 1 (torch intra-op, FAISS), BLAS 1, inter-op 1, decode 1" in err
    assert "OMP_WAIT_POLICY=" in err
    assert (out / "manifest.json").exists()


def test_negative_threads_is_a_clear_error_and_writes_nothing(photo_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index"
    assert cli_main(["build", str(photo_folder), "--out", str(out), "--threads", "-2", "--quiet"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_build_records_the_runtime_in_the_manifest_and_the_searcher_uses_it(photo_folder: Path, tmp_path: Path, tiny_config) -> None:
    import pytest

    from descriptors.runtimes import is_installed
    from indexer import build_extractor, build_index, open_index, read_manifest

    runtime = next((name for name in ("openvino", "onnxruntime") if is_installed(name)), None)
    if runtime is None:
        pytest.skip("no compiled runtime installed")
    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config.replace(runtime=runtime), progress=False)
    manifest = read_manifest(out)
    assert manifest["backbone"]["runtime"] == runtime
    extractor = build_extractor(manifest)
    assert extractor.backbone.runtime == runtime
    index = open_index(out)
    from PIL import Image

    first = sorted(p for p in photo_folder.iterdir() if p.suffix == ".jpg")[0]
    rows = extractor.local_rows([Image.open(first).convert("RGB")])
    query = extractor.global_descriptor(rows[0], index.whitening)[None]
    scores, ids = index.search(query, 1)
    assert index.paths([int(ids[0][0])])[0].endswith(first.name) and scores[0][0] > 0.999
