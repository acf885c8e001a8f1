"""The evaluation report: report.json and summary.html, the summary printed by the CLI, and the
plot helper.

A report is a dict keyed by family name (each entry the dict of that family's figures) plus a
`meta` entry describing what was evaluated, on what, with which versions (`meta["schema"]` is
the report format's, REPORT_SCHEMA), and how long each family took.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

from saelab._paths import atomic_path, write_json
from saelab.evaluate._html import SUMMARY, cell, not_a_number, render, write_page

META = "meta"
"""The report's entry that is not a family."""

REPORT_SCHEMA = 1
"""Version of the report's format (`meta["schema"]`): which entries it has and what they hold."""


def write_report(out: str | Path, report: dict,
                 plots: Mapping[str, Sequence[str | Path]] | None = None) -> Path:
    """Write `report.json` and `summary.html` into the folder `out` (created if needed); returns
    the path of report.json. A figure that is not a number (NaN, e.g. a mean-ablated loss without
    a data mean) is written as null. `plots` ({family: [PNG paths in `out`]}, what each family's
    `plot` wrote) are shown in the summary under their family."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", json_safe(report))
    write_summary(out / "summary.html", report, plots)
    return out / "report.json"


def write_summary(path: str | Path, report: dict,
                  plots: Mapping[str, Sequence[str | Path]] | None = None) -> Path:
    """Write the HTML page of `report` to `path` (atomically): what was evaluated, the headline
    figures, then each family's figures (headline ones first), its time and its plots (`plots`:
    {family: [paths of PNGs beside the page]}). Every text from the report is escaped."""
    path = Path(path)
    return write_page(path, render(SUMMARY, **_summary_context(report, plots or {}, path.parent)))


def _summary_context(report: dict, plots: Mapping[str, Sequence[str | Path]],
                     folder: Path) -> dict:
    """What the summary template shows (see `write_summary`)."""
    from saelab.evaluate._registry import describe, families

    meta = report.get(META) if isinstance(report.get(META), dict) else {}
    seconds = meta.get("seconds") if isinstance(meta.get("seconds"), dict) else {}
    known = set(families())
    sections, extras = [], {}
    for name, figures in report.items():
        if name == META:
            continue
        if name not in known or not isinstance(figures, dict):
            extras[name] = figures
            continue
        sections.append({"name": name, "about": describe(name), "seconds": seconds.get(name),
                         "rows": _rows(name, figures),
                         "plots": [_plot(p, folder) for p in plots.get(name, ())]})
    headlines = [{"family": s["name"], "figure": r["figure"], "value": r["value"],
                  "nan": r["nan"]} for s in sections for r in s["rows"] if r["headline"]]
    what = f"{meta.get('architecture', 'dictionary')}"
    if meta.get("n_latents") is not None:
        what += f", {meta['n_latents']} latents"
    where = f" at {meta['hookpoint']}" if meta.get("hookpoint") else ""
    total = sum(v for v in seconds.values() if isinstance(v, (int, float)))
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    subtitle = (f"{len(sections)} metric families in {total:.3g} s · saelab "
                f"{versions.get('saelab', '?')} · the figures are those of report.json beside "
                f"this page")
    return {"title": f"Evaluation of {what}{where}", "subtitle": subtitle, "meta": meta,
            "headlines": headlines, "families": sections, "extras": extras}


def _rows(name: str, figures: dict) -> list[dict]:
    """One row per figure of family `name`: its headline figures first (in the family's order),
    then the rest in the report's order; conditional NaN figures say so."""
    from saelab.evaluate._registry import family

    cls = family(name)
    order = [f for f in cls.headline if f in figures] + \
        [f for f in figures if f not in cls.headline]
    rows = []
    for key in order:
        value = figures[key]
        conditional = key in cls.conditional and not_a_number(value)
        note = "conditional: NaN unless the condition its family states holds" \
            if conditional else ""
        rows.append({"figure": key, "value": cell(value), "nan": not_a_number(value),
                     "headline": key in cls.headline, "note": note})
    return rows


def _plot(path: str | Path, folder: Path) -> dict:
    """A plot as the page links it: relative to the page's folder when inside it."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(folder.resolve())
    except ValueError:
        rel = path
    return {"src": quote(rel.as_posix()), "name": rel.as_posix()}


def json_safe(value):
    """`value` with every NaN or infinite float replaced by None (JSON's null): strict JSON
    readers refuse the bare NaN that Python's json module writes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def histogram(path: Path, values, xlabel: str, ylabel: str, bins: int) -> Path:
    """Write a PNG histogram of `values` (a 1-D array) to `path`, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=max(1, bins), color="#3b6ea8")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _headlines(report: dict, every: bool = False) -> list[tuple[str, str, float]]:
    """(family, figure, value) of each headline figure (each figure with `every`) of each
    registered family in `report`, in report order, NaN ones left out."""
    from saelab.evaluate._registry import families, family

    known = set(families())
    out = []
    for name, figures in report.items():
        if name == META or name not in known or not isinstance(figures, dict):
            continue
        keys = figures if every else family(name).headline
        out += [(name, key, figures[key]) for key in keys
                if isinstance(figures.get(key), (int, float)) and not math.isnan(figures[key])]
    return out


def headline(report: dict) -> dict[str, float]:
    """The headline figures of every family in `report` (each family says which): {figure:
    value}, or {"family.figure": value} where two families name a figure alike. Entries that are
    not registered families (`meta`, or what a caller added) are skipped."""
    return _flatten(_headlines(report))


def figures(report: dict) -> dict[str, float]:
    """Every figure of every family in `report`, flat, named as in `headline` (for tables that
    compare runs: `figures(report)["fvu"]`)."""
    return _flatten(_headlines(report, every=True))


def _flatten(picked: list[tuple[str, str, float]]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for _, key, _ in picked:
        counts[key] = counts.get(key, 0) + 1
    return {(key if counts[key] == 1 else f"{name}.{key}"): value for name, key, value in picked}


def format_report(report: dict) -> str:
    """A short human-readable table: each family of the report, then its headline figures."""
    lines: list[str] = []
    current = None
    for name, key, value in _headlines(report):
        if name != current:
            lines.append(name)
            current = name
        lines.append(f"  {key:<28} {value:.4f}")
    return "\n".join(lines)
