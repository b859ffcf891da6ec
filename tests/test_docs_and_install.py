"""The docs a clone has are self-contained (no ../shared paths, every relative link resolves) and
the CPU-only install the README documents is what `make install` runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_design_and_data_pages_are_in_the_repository() -> None:
    assert (REPO / "docs" / "design.md").is_file() and (REPO / "docs" / "data.md").is_file()
    for page in PAGES:
        assert "../shared/design.md" not in page.read_text(), page


def test_every_relative_link_resolves() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_uses_the_cpu_wheel_index_only_when_asked(tmp_path: Path) -> None:
    def dry_run(*extra: str) -> str:
        command = ["make", "-n", "-C", str(REPO), "install", f"VENV={tmp_path / 'venv'}", *extra]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    index = "https://download.pytorch.org/whl/cpu"
    assert f"torch torchvision --index-url {index}" in dry_run(f"TORCH_INDEX={index}")
    assert "--index-url" not in dry_run()
