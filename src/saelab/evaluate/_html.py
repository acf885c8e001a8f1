"""HTML pages of evaluation reports: `summary.html` beside a report.json, and `compare.html` of
several reports side by side.

The pages are Jinja2 templates rendered with autoescaping on, so every piece of text that comes
from a report (family and figure names, provenance, paths) is escaped; the stylesheet is the
dashboards' (`saelab.interpret.html.CSS`), marked safe as the one piece that is ours.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saelab._paths import atomic_path

ABSENT_TEXT = ""
"""How a figure that a report does not hold is shown (blank)."""

EXTRA_CSS = """
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
tr.headline td{font-weight:600}tr.headline td:first-child::after{content:" \\2605";color:#bf8700}
td.nan{color:#cf222e}td.absent{background:#f6f8fa}
table.meta td:first-child{color:#57606a;white-space:nowrap}
table.meta table{margin:0}table.meta table td{border:0;padding:0 10px 0 0}
section.family{margin-top:26px}figure{margin:10px 0;display:inline-block}
figcaption{font-size:12px;color:#6e7781}img{max-width:100%;border:1px solid #eaeef2}
tr.family-row th{background:#f6f8fa;color:#1f2328;font-size:13px}
"""

_META_MACRO = """
{%- macro value_of(v) -%}
{%- if v is mapping -%}
<table>{% for k, w in v.items() %}<tr><td>{{ k }}</td><td>{{ value_of(w) }}</td></tr>{% endfor %}
</table>
{%- elif v is iterable and v is not string -%}{{ v | map('cell') | join(', ') }}
{%- else -%}{{ v | cell }}{%- endif -%}
{%- endmacro -%}
"""

SUMMARY = _META_MACRO + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{ title }}</title><style>{{ css }}</style></head>
<body>
<h1>{{ title }}</h1>
<p class="muted">{{ subtitle }}</p>
{% if headlines %}
<h2>Headline figures</h2>
<table>
<tr><th>family</th><th>figure</th><th class="num">value</th></tr>
{% for h in headlines %}<tr><td><a href="#family-{{ h.family }}">{{ h.family }}</a></td>
<td><code>{{ h.figure }}</code></td><td class="num{{ ' nan' if h.nan }}">{{ h.value }}</td></tr>
{% endfor %}</table>
{% endif %}
<h2>What was evaluated</h2>
<table class="meta">
{% for k, v in meta.items() %}<tr><td>{{ k }}</td><td>{{ value_of(v) }}</td></tr>
{% endfor %}</table>
{% for f in families %}
<section class="family" id="family-{{ f.name }}">
<h2>{{ f.name }}</h2>
<p class="muted">{{ f.about }}{% if f.seconds is not none %} · {{ f.seconds }} s{% endif %}</p>
<table>
<tr><th>figure</th><th class="num">value</th><th></th></tr>
{% for r in f.rows %}<tr{% if r.headline %} class="headline"{% endif %}><td><code>{{ r.figure }}</code></td>
<td class="num{{ ' nan' if r.nan }}">{{ r.value }}</td><td class="muted">{{ r.note }}</td></tr>
{% endfor %}</table>
{% for p in f.plots %}<figure><img src="{{ p.src }}" alt="{{ p.name }}">
<figcaption>{{ p.name }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}
{% if extras %}<h2>Other entries</h2>
<table class="meta">
{% for k, v in extras.items() %}<tr><td>{{ k }}</td><td>{{ value_of(v) }}</td></tr>
{% endfor %}</table>{% endif %}
</body></html>
"""

COMPARE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{ title }}</title><style>{{ css }}</style></head>
<body>
<h1>{{ title }}</h1>
<p class="muted">Figures aligned by family and name; a blank cell: that report does not hold the
figure; NaN or null: the report holds it, without a number. ★: a headline figure.</p>
<table>
<tr><th>family</th><th>figure</th>{% for label in labels %}<th class="num">{{ label }}</th>{% endfor %}</tr>
{% for group in groups %}
<tr class="family-row"><th colspan="{{ 2 + labels | length }}">{{ group.family }}</th></tr>
{% for r in group.rows %}<tr{% if r.headline %} class="headline"{% endif %}><td></td><td><code>{{ r.figure }}</code></td>
{% for c in r.cells %}<td class="num{{ ' ' ~ c.kind if c.kind }}">{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}{% endfor %}
</table>
<h2>Reports</h2>
<table>{% for label, source in sources %}<tr><td>{{ label }}</td><td><code>{{ source }}</code></td></tr>
{% endfor %}</table>
</body></html>
"""


def cell(value: Any) -> str:
    """A figure or meta value as text: numbers compactly (NaN as NaN, JSON's null as null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def not_a_number(value: Any) -> bool:
    """Whether a figure is present without a number (NaN, or null in report.json)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def render(template: str, **context: Any) -> str:
    """`template` (SUMMARY or COMPARE) rendered with autoescaping on."""
    import jinja2
    from markupsafe import Markup

    from saelab.interpret.html import CSS

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = cell
    return env.from_string(template).render(css=Markup(CSS + EXTRA_CSS), **context)


def write_page(path: Path, text: str) -> Path:
    """Write an HTML page atomically; returns its path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
