"""dff-query on bad input: one clear line on stderr and exit status 2, nothing sent; the --show
figure says what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from searcher.client import main


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--top-k", "-1"], "argument --top-k: -1 is below 1"),
        (["--top-k", "0"], "argument --top-k: 0 is below 1"),
        (["--qe", "-1"], "argument --qe: -1 is below 0"),
        (["--top-k", "many"], "argument --top-k: 'many' is not a whole number"),
        (["--box", "-50,0,100,100"], "argument --box: '-50,0,100,100': coordinates are pixels of the image"),
        (["--box", "10,10,5,50"], "is empty: need x0 < x1"),
        (["--box", "1,2,3"], r"needs x0,y0,x1,y1 \(4 numbers\)"),
    ],
)
def test_bad_arguments_end_with_one_line_and_status_2(photo_folder: Path, capsys, args, pattern: str) -> None:
    import re

    with pytest.raises(SystemExit) as exit_info:
        main([str(photo_folder / "coffee.jpg"), "--port", "1", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dff-query: error: "), err
    assert re.search(pattern, err), err


def test_show_into_a_missing_folder_is_refused_before_the_search(photo_folder: Path, capsys) -> None:
    # port 1: nothing listens there, so reaching the search would give UNAVAILABLE and status 1
    code = main([str(photo_folder / "coffee.jpg"), "--port", "1", "--show", "/no/such/dir/out.png"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--show /no/such/dir/out.png: folder /no/such/dir does not exist" in err


def test_a_missing_query_file(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.jpg"), "--port", "1"]) == 2
    assert "nope.jpg is not a file" in capsys.readouterr().err


def test_the_heatmap_title_says_what_the_panel_shows(client, photo_folder: Path) -> None:
    from searcher.show import heatmap_title

    query = photo_folder / "chelsea.jpg"
    plain = client.search(query, top_k=2)
    assert heatmap_title(plain, None) == "no heatmap (query with --localize)"
    whole = client.search(query, top_k=2, localize=True, return_heatmaps=True)
    assert heatmap_title(whole, None) == f"NMF heatmap ({whole.query_factors} factors of the image)"
    boxed = client.search(query, box=(60, 0, 230, 213), top_k=2, localize=True, return_heatmaps=True)
    assert heatmap_title(boxed, (60, 0, 230, 213)).endswith("in the box)")
