"""MkDocs hooks: add the pages generated from the code (saelab.docgen) and render benchmark
tables from bench/results/. Named in mkdocs.yml (`hooks:`); not a page of the site."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

from saelab import docgen

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
PREFIX = "GENERATED "
_pages: list[docgen.Page] = []


def on_config(config):
    """Generate the pages once per build and put them in the navigation where mkdocs.yml says
    `GENERATED <folder or page>`."""
    _pages[:] = docgen.generated_pages()
    config["nav"] = [_expand(item) for item in config["nav"]]
    return config


def _expand(item):
    if not isinstance(item, dict):
        return item
    (title, value), = item.items()
    if isinstance(value, list):
        return {title: [_expand(v) for v in value]}
    if not (isinstance(value, str) and value.startswith(PREFIX)):
        return item
    where = value[len(PREFIX):]
    if not where.endswith("/"):
        return {title: where}
    return {title: [{p.title: p.path} for p in _pages if p.path.startswith(where)]}


def on_files(files, config):
    for page in _pages:
        files.append(File.generated(config, page.path, content=page.text))
    return files


def on_page_markdown(markdown, page, config, files):
    return docgen.render_benchmarks(markdown, RESULTS)
