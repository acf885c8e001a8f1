"""The generated pages cover every registered dictionary and metric family and every CLI
command, and show what the code declares; benchmark results files carry their command and
date, and every one of them is shown on a page."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest

from saelab import docgen
from saelab.config import field_help
from saelab.dictionaries import get, names

ROOT = Path(__file__).resolve().parents[2]
RESULTS = sorted((ROOT / "bench" / "results").glob("*.json"))


def test_a_page_per_registered_dictionary_and_metric_family() -> None:
    paths = {p.path for p in docgen.generated_pages()}
    assert {f"dictionaries/{n}.md" for n in names()} <= paths
    families = importlib.import_module("saelab.evaluate").families()
    assert families and {f"metrics/{n}.md" for n in families} <= paths
    assert "cli.md" in paths


@pytest.mark.parametrize("name", names())
def test_dictionary_page_lists_every_config_field_with_its_help(name: str) -> None:
    page = docgen.dictionary_page(name)
    cls = get(name)
    assert page.startswith(f"# `{name}`")
    assert f"`{cls.trained_by}`" in page
    for f in dataclasses.fields(cls.Config):
        assert f"| `{f.name}` |" in page
        assert docgen.escape_pipes(docgen.escape(field_help(cls.Config, f.name))) in page


def test_dictionary_page_shows_its_paper_and_needs() -> None:
    topk = docgen.dictionary_page("topk")
    assert "Scaling and evaluating sparse autoencoders" in topk  # the module docstring's paper
    transcoder = docgen.dictionary_page("transcoder")
    assert "`target`" in transcoder


@pytest.mark.parametrize("name", names())
def test_dictionary_page_shows_each_declared_format(name: str) -> None:
    formats = getattr(get(name), "formats", None) or {}
    page = docgen.dictionary_page(name)
    assert ("## Other libraries' formats" in page) == bool(formats)
    for key in formats:
        assert f"**{docgen.FORMAT_NAMES.get(key, key)}**" in page


def test_metric_page_shows_needs_and_figures() -> None:
    ev = importlib.import_module("saelab.evaluate")
    for name in ev.families():
        page = docgen.metric_page(name)
        cls = ev.family(name)
        assert all(f"`{need}`" in page for need in cls.needs)
        assert all(f"`{figure}`" in page for figure in cls.figures)


def test_cli_reference_has_every_command_with_the_options_its_help_shows(capsys) -> None:
    """Every command has a section, and every option the reference names is one that
    `saelab COMMAND --help` shows (so the page cannot drift from the real flags)."""
    cli = importlib.import_module("saelab.cli")
    page = docgen.cli_reference()
    for name, command in cli.commands().items():
        assert f"## `saelab {name}`" in page
        if not dataclasses.is_dataclass(command.config):
            continue
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        shown = capsys.readouterr().out
        for row in docgen.cli_options(command.config):
            flag = row[0].strip("`")
            assert flag in shown, f"saelab {name} --help does not show {flag}"
            assert f"| `{flag}` |" in page


def test_docstring_markup_is_escaped_outside_code_spans() -> None:
    assert docgen.escape("W_dec [n, d] <x> `a_b`") == r"W\_dec \[n, d\] \<x\> `a_b`"
    assert docgen.escape_pipes("|z| `int | None`") == r"\|z\| `int | None`"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_file_has_command_date_and_a_rectangular_table(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data["command"].strip() and data["date"].strip()
    assert data["rows"] and all(len(row) == len(data["columns"]) for row in data["rows"])
    table = docgen.benchmark_table(path)
    assert data["command"].split()[0] in table and data["date"] in table


def test_every_results_file_is_shown_on_a_benchmark_page() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    shown = set(docgen.BENCH_MARKER.findall(text))
    assert shown == {p.name for p in RESULTS}


def test_benchmark_table_refuses_a_file_without_command_or_date(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"columns": ["a"], "rows": [["1"]], "date": "2026-12-01"}))
    with pytest.raises(ValueError, match="command"):
        docgen.benchmark_table(bad)
