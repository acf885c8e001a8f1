"""Reports side by side: `compare` aligns figures by family and name (blank where a report lacks
one, NaN and null as such), `saelab eval --compare` prints the table and writes compare.html,
and what is not a report of this schema is refused, saying so."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

import saelab
from saelab.cli import main
from saelab.errors import ConfigError
from saelab.evaluate import (ABSENT, META, Family, compare, families, family,
                             format_comparison, write_comparison)
from saelab.evaluate import _registry as registry


def _evaluate(folder, metrics, seed=0):
    sae = saelab.create("topk", d_in=16, n_latents=48, k=3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return saelab.evaluate(sae, torch.randn(300, 16, generator=g), metrics=metrics, out=folder)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Three report folders: a (reconstruction, sparsity), b (sparsity, afa), c (sparsity)."""
    root = tmp_path_factory.mktemp("reports")
    made = {"a": ("reconstruction", "sparsity"), "b": ("sparsity", "afa"), "c": ("sparsity",)}
    return root, {k: (root / k, _evaluate(root / k, m, seed=i))
                  for i, (k, m) in enumerate(made.items())}


def _row(comparison, fam, figure):
    return next(r for r in comparison.rows if (r.family, r.figure) == (fam, figure))


def test_two_reports_with_different_families_align_and_missing_figures_are_blank(reports):
    _, made = reports
    (a, ra), (b, rb) = made["a"], made["b"]
    comparison = compare([a, b / "report.json"])
    assert comparison.labels == ("a", "b")
    for fam in ("reconstruction", "sparsity", "afa"):
        names = [r.figure for r in comparison.rows if r.family == fam]
        assert set(names) == set(family(fam).figures)
        assert names[:len(family(fam).headline)] == list(family(fam).headline)  # headline first
    assert _row(comparison, "reconstruction", "fvu").values == \
        (pytest.approx(ra["reconstruction"]["fvu"]), ABSENT)
    assert _row(comparison, "afa", "afa_under").values == \
        (ABSENT, pytest.approx(rb["afa"]["afa_under"]))
    assert _row(comparison, "sparsity", "l0").values == \
        (pytest.approx(ra["sparsity"]["l0"]), pytest.approx(rb["sparsity"]["l0"]))
    assert _row(comparison, "seconds", "afa").values[0] is ABSENT

    lines = format_comparison(comparison).splitlines()
    header = lines[0]
    end_a, end_b = header.index(" a") + 2, header.index(" b") + 2  # right-aligned columns
    fvu = next(line for line in lines if re.match(r"\s*reconstruction\s+fvu \*", line)
               or re.match(r"\s+fvu \*", line))
    assert len(fvu) == end_a  # a value under a, nothing under b
    assert fvu.endswith(f"{ra['reconstruction']['fvu']:.4g}")
    under = next(line for line in lines if re.match(r"\s+afa_under \*", line))
    assert len(under) == end_b and under[:end_a].strip() == "afa_under *"


def test_three_reports_side_by_side(reports):
    _, made = reports
    comparison = compare([made[k][0] for k in "abc"])
    assert comparison.labels == ("a", "b", "c")
    assert all(len(r.values) == 3 for r in comparison.rows)
    assert _row(comparison, "sparsity", "n_inputs").values == (300, 300, 300)
    assert _row(comparison, "afa", "afa_over").values[::2] == (ABSENT, ABSENT)


def test_nan_and_null_are_shown_as_such(reports, tmp_path):
    _, made = reports
    report = json.loads((made["a"][0] / "report.json").read_text())
    report["reconstruction"]["mse"] = math.nan  # in memory: NaN
    saved = tmp_path / "saved"
    saved.mkdir()
    on_disk = json.loads(json.dumps(report).replace("NaN", "null"))
    (saved / "report.json").write_text(json.dumps(on_disk))  # on disk: null
    comparison = compare([report, saved])
    values = _row(comparison, "reconstruction", "mse").values
    assert math.isnan(values[0]) and values[1] is None
    line = next(x for x in format_comparison(comparison).splitlines()
                if re.match(r"\s+mse\s", x))
    assert line.split()[-2:] == ["NaN", "null"]


def test_a_json_that_is_not_a_report_is_refused_clearly(reports, tmp_path):
    _, made = reports
    cases = {"list.json": "[1, 2]", "config.json": '{"architecture": "topk", "k": 32}',
             "broken.json": '{"meta": '}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=re.escape(name)) as err:
            compare([made["a"][0], tmp_path / name])
        assert "report" in str(err.value)
    with pytest.raises(ConfigError, match="not a saelab evaluation report"):
        compare([tmp_path / "config.json"])
    with pytest.raises(ConfigError, match="not a JSON file"):
        compare([tmp_path / "broken.json"])
    with pytest.raises(ConfigError, match="no report here"):
        compare([tmp_path / "nowhere"])
    report = json.loads((made["a"][0] / "report.json").read_text())
    report[META]["schema"] = 99
    (tmp_path / "future.json").write_text(json.dumps(report))
    with pytest.raises(ConfigError, match="schema 99"):
        compare([tmp_path / "future.json"])


class Table(HTMLParser):
    """The rows of compare.html's first table as (cell texts, cell classes)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.rows, self.row, self.cell, self.done, self.texts = [], None, None, False, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        if tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ([], dict(attrs).get("class", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and not self.done:
            self.row.append(("".join(self.cell[0]).strip(), self.cell[1]))
            self.cell = None
        elif tag == "tr" and self.row is not None and not self.done:
            self.rows.append(self.row)
            self.row = None
        elif tag == "table":
            self.done = True

    def handle_data(self, data):
        self.texts.append(data)
        if self.cell is not None:
            self.cell[0].append(data)


def test_compare_html_aligns_blanks_and_escapes(reports, tmp_path):
    root, made = reports
    odd = root / "<img src=x onerror=alert(1)>"  # a folder name (no '/' in one)
    odd.mkdir(exist_ok=True)
    (odd / "report.json").write_text((made["b"][0] / "report.json").read_text())
    path = write_comparison(tmp_path / "compare.html", compare([made["a"][0], odd]))
    raw = path.read_text()
    assert "<img" not in raw and "&lt;img src=x onerror=alert(1)&gt;" in raw
    table = Table(raw)
    header = [text for text, _ in table.rows[0]]
    assert header == ["family", "figure", "a", "<img src=x onerror=alert(1)>"]
    fvu = next(r for r in table.rows if len(r) == 4 and r[1][0] == "fvu")
    assert fvu[2][0] == f"{made['a'][1]['reconstruction']['fvu']:.4g}"
    assert fvu[3] == ("", "num absent")


def test_cli_eval_compare_prints_the_table_and_writes_html(reports, tmp_path):
    _, made = reports
    res = subprocess.run([sys.executable, "-m", "saelab", "eval", "--compare",
                          str(made["a"][0]), str(made["b"][0] / "report.json"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == ["family", "figure", "a", "b"]
    for fam in ("reconstruction", "sparsity", "afa"):
        assert all(re.search(rf"\b{f}\b", res.stdout) for f in family(fam).figures)
    assert (tmp_path / "compare.html").is_file()
    assert f"{tmp_path / 'compare.html'}" in res.stdout


def test_cli_eval_compare_refuses_a_non_report_and_eval_still_needs_its_arguments(
        reports, tmp_path, capsys):
    _, made = reports
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert main(["eval", "--compare", str(made["a"][0]), str(tmp_path / "x.json")]) == 2
    assert "x.json is not a saelab evaluation report" in capsys.readouterr().err
    assert not (made["a"][0] / "compare.html").exists()
    assert main(["eval"]) == 2
    assert "saelab eval SAE STORE" in capsys.readouterr().err


def test_eval_help_lists_every_registered_family_with_its_line(capsys, monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    class Probe(Family):
        """Counts the help's readers, for a test. Not a real metric."""

        figures = ("readers",)
        headline = ("readers",)

    registry.register("zz_help_probe")(Probe)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    listing = out[out.index("metric families"):]
    for name in families():
        first = registry.describe(name).split()[:4]
        assert re.search(rf"^  {name}\s+" + r"\s+".join(map(re.escape, first)), listing,
                         re.MULTILINE), name
    assert re.search(r"^  zz_help_probe\s+Counts the help's readers, for a test\.$", listing,
                     re.MULTILINE)
