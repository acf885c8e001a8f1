"""The evaluation report: report.json, the summary printed by the CLI, and the plot helper.

A report is a dict keyed by family name (each entry the dict of that family's figures) plus a
`meta` entry describing what was evaluated, on what, with which versions, and how long each
family took.
"""

from __future__ import annotations

import math
from pathlib import Path

from saelab._paths import atomic_path, write_json

META = "meta"
"""The report's entry that is not a family."""


def write_report(out: str | Path, report: dict) -> Path:
    """Write `report.json` into the folder `out` (created if needed); returns its path. A figure
    that is not a number (NaN, e.g. a mean-ablated loss without a data mean) is written as null."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", json_safe(report))
    return out / "report.json"


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
