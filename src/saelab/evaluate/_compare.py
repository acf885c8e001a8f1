"""Several evaluation reports side by side: `compare` aligns their figures by family and name,
`format_comparison` prints the table, `write_comparison` writes it as HTML (compare.html)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from saelab.errors import ConfigError
from saelab.evaluate._html import ABSENT_TEXT, COMPARE, cell, not_a_number, render, write_page
from saelab.evaluate._report import META, REPORT_SCHEMA


class Absent:
    """The value of a figure that a report does not hold (shown blank); falsy, one instance."""

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT = Absent()
"""The value in `Row.values` of a figure that a report does not hold."""

META_ROWS = ("architecture", "n_latents", "d_in", "hookpoint", "model", "seed")
"""The `meta` entries compared first (what was evaluated), when a report holds them."""

SECONDS = "seconds"
"""The comparison's group holding each family's time (from `meta["seconds"]`)."""


class Row(NamedTuple):
    """One figure across the compared reports."""

    family: str
    """The family (or `meta`, or `seconds` for the time per family)."""
    figure: str
    """The figure's name within its family."""
    values: tuple
    """Its value in each report, in order: a number, NaN, None (null in report.json), text,
    or ABSENT where that report does not hold it."""
    headline: bool
    """Whether it is one of its family's headline figures."""


class Comparison(NamedTuple):
    """Reports side by side (what `compare` returns)."""

    labels: tuple[str, ...]
    """A short name per report (its folder's name, made unique)."""
    sources: tuple[str, ...]
    """Where each report came from (its path, or `<dict N>` for one given as a dict)."""
    rows: tuple[Row, ...]
    """The aligned figures: meta first, then each family in order of first appearance (its
    headline figures first), then the time per family."""


def load_report(path: str | Path) -> dict:
    """Read a report: a report.json file, or a folder holding one. Anything else (a missing file,
    not JSON, JSON that is not a saelab report, a report of another schema) is a ConfigError that
    says what was found."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no report here (expected a report.json file or a folder "
                          f"holding one, as `saelab eval --out DIR` writes)")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: not a JSON file ({e}); expected a report.json of "
                          f"`saelab eval`") from None
    check_report(report, str(file))
    return report


def check_report(report: Any, where: str = "report") -> None:
    """Refuse (ConfigError) what is not an evaluation report of this saelab's schema: a JSON
    object with a `meta` object listing its `families`, each an object of figures."""
    if not isinstance(report, dict) or not isinstance(report.get(META), dict) or \
            not isinstance(report[META].get("families"), list):
        kind = type(report).__name__ if not isinstance(report, dict) else \
            f"an object with keys {sorted(report)[:8]}"
        raise ConfigError(f"{where} is not a saelab evaluation report: it is {kind}, and a "
                          f"report is an object with a 'meta' entry listing its 'families' "
                          f"(written by saelab.evaluate(..., out=DIR) or `saelab eval`)")
    schema = report[META].get("schema", REPORT_SCHEMA)  # reports before the field: schema 1
    if schema != REPORT_SCHEMA:
        raise ConfigError(f"{where} is a report of schema {schema!r}; this saelab reads schema "
                          f"{REPORT_SCHEMA}: compare it with the saelab version that wrote it "
                          f"(meta.versions.saelab: "
                          f"{report[META].get('versions', {}).get('saelab', 'unknown')})")
    bad = [n for n in report[META]["families"] if not isinstance(report.get(n), dict)]
    if bad:
        raise ConfigError(f"{where} lists families {bad} in its meta without their figures: "
                          f"not a complete saelab evaluation report")


def compare(reports: Sequence[str | Path | dict]) -> Comparison:
    """Align the figures of `reports` (paths of report.json files or of folders holding one, or
    report dicts) by family and figure name; a figure a report lacks is ABSENT there. Every
    report is checked (`load_report`, `check_report`) before any is compared."""
    if len(reports) < 1:
        raise ConfigError("compare needs at least one report (a report.json or its folder)")
    loaded, sources = [], []
    for i, r in enumerate(reports):
        if isinstance(r, dict):
            check_report(r, f"report {i + 1}")
            loaded.append(r)
            sources.append(f"<dict {i + 1}>")
        else:
            loaded.append(load_report(r))
            sources.append(str(r))
    rows = _meta_rows(loaded) + _family_rows(loaded) + _seconds_rows(loaded)
    return Comparison(_labels(reports), tuple(sources), tuple(rows))


def _labels(reports: Sequence[str | Path | dict]) -> tuple[str, ...]:
    """A short, unique column name per report: the shortest tail of its folder's path (the
    file's folder for a report.json) that no other report shares; `report N` for a dict."""
    parts = [None if isinstance(r, dict) else
             (Path(r).parent if Path(r).suffix == ".json" else Path(r)).resolve().parts
             for r in reports]
    out = []
    for i, mine in enumerate(parts):
        if mine is None:
            out.append(f"report {i + 1}")
            continue
        others = [p for j, p in enumerate(parts) if j != i and p is not None]
        n = 1
        while n < len(mine) and any(p[-n:] == mine[-n:] for p in others):
            n += 1
        out.append("/".join(mine[-n:]).lstrip("/") or "/")
    return tuple(out)


def _meta_rows(reports: list[dict]) -> list[Row]:
    rows = []
    for key in META_ROWS:
        values = tuple(r[META].get(key, ABSENT) for r in reports)
        if any(v is not ABSENT for v in values):
            rows.append(Row(META, key, values, False))
    return rows


def _family_rows(reports: list[dict]) -> list[Row]:
    """Every family of any report, in order of first appearance; in each, the registered
    family's headline figures first, then every other figure in order of first appearance."""
    from saelab.evaluate._registry import families, family

    known = set(families())
    names = list(dict.fromkeys(n for r in reports for n in r[META]["families"]))
    rows = []
    for name in names:
        headline = family(name).headline if name in known else ()
        held = [r[name] if name in r[META]["families"] else {} for r in reports]
        keys = list(dict.fromkeys([k for k in headline if any(k in h for h in held)]
                                  + [k for h in held for k in h]))
        for key in keys:
            rows.append(Row(name, key, tuple(h.get(key, ABSENT) for h in held),
                            key in headline))
    return rows


def _seconds_rows(reports: list[dict]) -> list[Row]:
    timed = [r[META].get("seconds") if isinstance(r[META].get("seconds"), dict) else {}
             for r in reports]
    keys = list(dict.fromkeys(k for t in timed for k in t))
    return [Row(SECONDS, k, tuple(t.get(k, ABSENT) for t in timed), False) for k in keys]


def _text(value: Any) -> str:
    return ABSENT_TEXT if value is ABSENT else cell(value)


def format_comparison(comparison: Comparison) -> str:
    """The comparison as a plain-text table (what `saelab eval --compare` prints): one line per
    figure, one column per report; blank where a report lacks the figure, NaN or null as such."""
    header = ["family", "figure", *comparison.labels]
    body = [[r.family, r.figure + (" *" if r.headline else ""), *map(_text, r.values)]
            for r in comparison.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines, last = [], None
    for line in [header, *body]:
        shown = list(line)
        if line is not header and shown[0] == last:
            shown[0] = ""  # the family once, at its first figure
        last = line[0] if line is not header else None
        left = [f"{shown[0]:<{widths[0]}}", f"{shown[1]:<{widths[1]}}"]
        right = [f"{v:>{w}}" for v, w in zip(shown[2:], widths[2:])]
        lines.append("  ".join(left + right).rstrip())
        if line is header:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(* a headline figure; blank: not in that report)"


def write_comparison(path: str | Path, comparison: Comparison) -> Path:
    """Write the comparison as an HTML page (atomically); returns its path."""
    groups: list[dict] = []
    for r in comparison.rows:
        if not groups or groups[-1]["family"] != r.family:
            groups.append({"family": r.family, "rows": []})
        cells = [{"text": _text(v), "kind": "absent" if v is ABSENT else
                  "nan" if not_a_number(v) else ""} for v in r.values]
        groups[-1]["rows"].append({"figure": r.figure, "headline": r.headline, "cells": cells})
    title = f"{len(comparison.labels)} evaluation reports side by side"
    page = render(COMPARE, title=title, labels=comparison.labels, groups=groups,
                  sources=list(zip(comparison.labels, comparison.sources)))
    return write_page(Path(path), page)
