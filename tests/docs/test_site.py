"""The documentation site builds with `mkdocs build --strict`, and strictness bites: a broken
link fails the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mkdocs", reason="MkDocs is in the dev extra: pip install -e '.[dev]'")
pytest.importorskip("material", reason="mkdocs-material is in the dev extra: "
                                       "pip install -e '.[dev]'")


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` (not -q: it hides the warnings that --strict counts)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config), "-d", str(site)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=config.parent)


def test_site_builds_strictly_with_every_generated_page(tmp_path: Path) -> None:
    from saelab import docgen

    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    for page in docgen.generated_pages():
        html = tmp_path / "site" / page.path.replace("index.md", "").replace(".md", "/") \
            / "index.html"
        assert html.is_file(), f"generated page {page.path} is missing from the site"
    demo = (tmp_path / "site" / "benchmarks" / "demo" / "index.html").read_text()
    assert "0.2002" in demo and "bench/results/demo.json" in demo  # tables rendered from data


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copytree(ROOT / "bench" / "results", copy / "bench" / "results")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "libraries.md"
    page.write_text(page.read_text() + "\nSee [a page that does not exist](nowhere.md).\n")
    result = build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "nowhere.md" in result.stderr
