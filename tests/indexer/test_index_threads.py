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
    assert "dff-index build: threads: compute 1 (torch intra-op, FAISS, BLAS), inter-op 1, decode 1" in err
    assert "OMP_WAIT_POLICY=" in err
    assert (out / "manifest.json").exists()


def test_negative_threads_is_a_clear_error_and_writes_nothing(photo_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index"
    assert cli_main(["build", str(photo_folder), "--out", str(out), "--threads", "-2", "--quiet"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
    assert not out.exists()
