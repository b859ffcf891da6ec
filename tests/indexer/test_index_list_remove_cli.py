"""`dff-index list` shows what an index holds; `dff-index remove` of unknown ids exits non-zero."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.cli import main


def _build(photo_folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "index"
    assert main(["build", str(photo_folder), "--out", str(out), "--image-size", "64", "--k", "2",
                 "--max-iter", "20", "--workers", "0", "--quiet"]) == 0
    return out


def test_list_and_remove(photo_folder: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from descriptors.images import iter_image_files

    index = _build(photo_folder, tmp_path)
    capsys.readouterr()
    assert main(["list", str(index), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    files = list(iter_image_files(photo_folder))
    assert sorted(Path(item["path"]) for item in listed) == sorted(p.resolve() for p in files)
    assert sorted(item["id"] for item in listed) == list(range(len(files)))
    for item in listed:
        with Image.open(item["path"]) as img:
            assert (item["width"], item["height"]) == img.size
        assert item["added"].endswith("+00:00") and item["status"] == "indexed"

    assert main(["list", str(index)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "size", "added", "(UTC)", "path"] and len(table) == len(files) + 1

    assert main(["remove", str(index), "--ids", "9999"]) == 1
    captured = capsys.readouterr()
    assert "none of the 1 requested image(s)" in captured.err and "nothing was removed" in captured.err
    assert main(["list", str(index), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(files)

    assert main(["remove", str(index), "--ids", str(listed[0]["id"]), "9999"]) == 0
    assert "removed 1 of 2" in capsys.readouterr().out
    assert main(["list", str(index), "--json"]) == 0
    assert listed[0]["id"] not in [item["id"] for item in json.loads(capsys.readouterr().out)]


def test_list_of_a_folder_that_is_not_an_index(tmp_path: Path, capsys) -> None:
    assert main(["list", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("dff-index list: error: ")
