"""summary.html beside report.json: it holds every figure of the report (headline ones first),
each family's time and plots, and escapes every text that comes from the report."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import torch

import saelab
from saelab.evaluate import META, family, write_summary
from saelab.evaluate._html import cell

PAYLOAD = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Page(HTMLParser):
    """The parts of a summary page the tests read: every start tag, and per family section
    (its id) the rows of its figure table, its time line and its images."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.sections: dict[str, dict] = {}
        self.section: str | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.para: list[str] | None = None
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.section = attrs["id"].removeprefix("family-")
            self.sections[self.section] = {"rows": [], "about": "", "images": []}
        elif self.section and tag == "tr":
            self.row = []
        elif self.section and tag == "td":
            self.cell = []
        elif self.section and tag == "p":
            self.para = []
        elif self.section and tag == "img":
            self.sections[self.section]["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "section":
            self.section = None
        elif tag == "td" and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row:
            self.sections[self.section]["rows"].append(self.row)
            self.row = None
        elif tag == "p" and self.para is not None:
            self.sections[self.section]["about"] = "".join(self.para)
            self.para = None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self.cell, self.para):
            if part is not None:
                part.append(data)


def test_summary_html_holds_every_figure_headline_first_with_time_and_plots(tmp_path):
    sae = saelab.create("topk", d_in=16, n_latents=48, k=3, seed=0)
    returned = saelab.evaluate(sae, torch.randn(400, 16), out=tmp_path, seed=0,
                               metrics=("reconstruction", "sparsity", "dark_matter"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary file left behind
        "density_hist.png", "l0_hist.png", "report.json", "summary.html"]
    page = Page((tmp_path / "summary.html").read_text())
    assert list(page.sections) == ["reconstruction", "sparsity", "dark_matter"]
    for name, section in page.sections.items():
        shown = {row[0]: row[1] for row in section["rows"]}
        assert shown == {k: cell(v) for k, v in report[name].items()}, name
        headline = family(name).headline
        assert [row[0] for row in section["rows"][:len(headline)]] == list(headline)
        assert f"{returned[META]['seconds'][name]} s" in section["about"]
    assert page.sections["sparsity"]["images"] == ["l0_hist.png", "density_hist.png"]
    assert page.sections["reconstruction"]["images"] == []
    text = "".join(page.text)
    assert "torch" in text and torch.__version__ in text  # what was evaluated: the meta entry


def test_summary_html_escapes_text_from_the_report(tmp_path):
    sae = saelab.create("topk", d_in=16, n_latents=48, k=3, seed=0)
    sae.provenance["dataset"] = PAYLOAD
    saelab.evaluate(sae, torch.randn(200, 16), metrics=("reconstruction",), out=tmp_path)
    raw = (tmp_path / "summary.html").read_text()
    page = Page(raw)
    assert "<script" not in raw
    assert not any(tag == "script" for tag, _ in page.tags)
    assert all(attrs.get("src") != "x" and "onerror" not in attrs for _, attrs in page.tags)
    assert PAYLOAD in "".join(page.text)  # shown as text, intact

    report = json.loads((tmp_path / "report.json").read_text())
    report[PAYLOAD] = {PAYLOAD: 1.0}  # an entry a caller added, named by the payload
    write_summary(tmp_path / "again.html", report,
                  plots={"reconstruction": [tmp_path / 'a"b<c>.png']})
    raw = (tmp_path / "again.html").read_text()
    page = Page(raw)
    assert "<script" not in raw and not any(tag == "script" for tag, _ in page.tags)
    assert "".join(page.text).count(PAYLOAD) == 3  # the provenance, the entry and its key
    assert page.sections["reconstruction"]["images"] == ["a%22b%3Cc%3E.png"]


def test_summary_html_shows_nan_and_marks_a_conditional_figure(tmp_path):
    similarity = family("similarity")
    figures = {k: 0.5 for k in similarity.figures}
    figures[similarity.conditional[0]] = math.nan
    write_summary(tmp_path / "summary.html", {"similarity": figures,
                                              META: {"families": ["similarity"]}})
    rows = {r[0]: r for r in Page((tmp_path / "summary.html").read_text())
            .sections["similarity"]["rows"]}
    nan_row = rows[similarity.conditional[0]]
    assert nan_row[1] == "NaN" and "conditional" in nan_row[2]
    assert all(r[1] == "0.5" and r[2] == "" for k, r in rows.items()
               if k != similarity.conditional[0])
