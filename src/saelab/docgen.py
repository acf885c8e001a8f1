"""Documentation pages generated from the code: one page per registered dictionary and per metric
family, the CLI reference, and benchmark tables rendered from bench/results/*.json.

The MkDocs build calls these through docs/hooks.py; the tests call them directly. Every function
returns Markdown text.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

BENCH_MARKER = re.compile(r"<!--\s*bench:\s*([\w.-]+\.json)\s*-->")
"""`<!-- bench: NAME.json -->` in a page: replaced by the table of bench/results/NAME.json."""


class Page(NamedTuple):
    """A generated page."""

    path: str
    """Path of the page inside docs/, e.g. "dictionaries/topk.md"."""
    title: str
    """Its title in the navigation."""
    text: str
    """Its Markdown."""


# --- Markdown helpers --------------------------------------------------------------------------
def escape(text: str) -> str:
    """Plain text (a docstring) as Markdown that shows it as written: characters Markdown would
    read as markup are escaped, code spans in backticks are kept (`table` escapes `|`)."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = re.sub(r"([\\*_\[\]<>#])", r"\\\1", parts[i])
    return "".join(parts)


def escape_pipes(text: str) -> str:
    """`text` fit for a table cell: `|` escaped outside code spans (inside them it is kept)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def docstring(obj: Any) -> str:
    """The cleaned docstring of `obj` (its own, not inherited), as Markdown paragraphs."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc:
        return ""
    lines = inspect.cleandoc(doc).split("\n")
    out: list[str] = []
    code_block = False
    for line in lines:  # Markdown needs a blank line before a list that follows a paragraph
        after_paragraph = out and out[-1].strip() and not out[-1].startswith(("- ", " "))
        if line.startswith("- ") and after_paragraph:
            out.append("")
        # an indented block after a blank line (not a list item's continuation) is code: as is
        if line.startswith("    ") and (code_block or (out and not out[-1].strip()
                                                      and not _in_list(out))):
            code_block = True
            out.append(line)
            continue
        code_block = False
        out.append(escape(line))
    return "\n".join(out)


def _in_list(out: list[str]) -> bool:
    """Whether the last paragraph of `out` is a list (its indented lines continue an item)."""
    for line in reversed(out[:-1]):
        if line.strip():
            return line.startswith(("- ", "  "))
    return False


def table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; cells are shown as given (`|` escaped)."""
    def cell(value: Any) -> str:
        return escape_pipes(str(value).replace("\n", " "))

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def code(value: Any) -> str:
    """`value` as an inline code span (a double-backtick span when it holds a backtick)."""
    text = str(value)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


# --- config fields -----------------------------------------------------------------------------
def field_default(f: dataclasses.Field) -> str:
    """How a field's default reads in the docs ("required" when it has none)."""
    if f.default is not dataclasses.MISSING:
        return code(repr(f.default))
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return code(repr(f.default_factory()))  # type: ignore[misc]
    return "required"


def field_type(f: dataclasses.Field) -> str:
    """A field's annotation as written in its class (a string under postponed annotations)."""
    tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
    return code(str(tp).replace("typing.", ""))


def fields_table(cls: type, only: set[str] | None = None) -> str:
    """The fields of config dataclass `cls` (or those in `only`): name, type, default, help."""
    from saelab.config import field_help

    rows = [[code(f.name), field_type(f), field_default(f), escape(field_help(cls, f.name))]
            for f in dataclasses.fields(cls) if only is None or f.name in only]
    return table(["field", "type", "default", "help"], rows)


# --- dictionaries ------------------------------------------------------------------------------
def dictionary_needs(cls: type) -> str:
    """What training needs, as a sentence; a config-dependent `needs` is said to be one."""
    static = inspect.getattr_static(cls, "needs", frozenset())
    if isinstance(static, property):
        prop = docstring(static.fget) if static.fget else ""
        return "depends on the config" + (f": {prop}" if prop else "")
    return ", ".join(code(n) for n in sorted(static)) or "nothing besides the input rows"


FORMAT_NAMES = {"saelens": "SAELens", "sparsify": "sparsify",
                "dictionary_learning": "dictionary_learning"}
"""How a `formats` key reads on a page."""


def dictionary_formats(cls: type) -> str | None:
    """The variant's declared mapping to other libraries' formats (`Dictionary.formats`: format
    name -> a mapping object), one bullet per format; None when it declares none."""
    formats = inspect.getattr_static(cls, "formats", None)
    if not formats:
        return None
    if not isinstance(formats, dict):
        return escape(str(formats))
    return "\n".join(f"- **{FORMAT_NAMES.get(k, escape(str(k)))}**: {_mapping(v)}"
                     for k, v in formats.items())


def _mapping(value: Any) -> str:
    """A format mapping (a dataclass) as `field: value` pairs; empty fields are left out,
    callables shown by name."""
    if not dataclasses.is_dataclass(value):
        return code(value)
    pairs = []
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if v is None or (hasattr(v, "__len__") and not isinstance(v, str) and len(v) == 0):
            continue
        shown = code(getattr(v, "__name__", "")) if callable(v) else code(
            dict(v) if hasattr(v, "items") else v)
        pairs.append(f"{f.name} {shown}")
    return "; ".join(pairs) or "as the format's default layout"


def dictionary_page(name: str) -> str:
    """The page of registered dictionary `name`: its paper (module and class docstrings), what
    training needs, how it is trained, interop formats if declared, and its config fields."""
    from saelab.dictionaries import DictionaryConfig, get

    cls = get(name)
    module = inspect.getmodule(cls)
    base = {f.name for f in dataclasses.fields(DictionaryConfig)}
    own = {f.name for f in dataclasses.fields(cls.Config)} - base
    parts = [f"# `{name}`", "", docstring(module) if module else "", "",
             f"**Class** `{cls.__module__}.{cls.__qualname__}`", "", docstring(cls), "",
             f"- **Trained by**: {code(getattr(cls, 'trained_by', 'gradient'))}",
             f"- **Training needs**: {dictionary_needs(cls)}", ""]
    formats = dictionary_formats(cls)
    if formats:
        parts += ["## Other libraries' formats", "", formats, ""]
    how = (f"a blank one is `saelab.create(\"{name}\", d_in=..., n_latents=..., **fields)`; "
           f"it is read from a model's weights, not trained (see the class above)"
           if getattr(cls, "trained_by", "gradient") == "model" else
           f'`saelab.create("{name}", d_in=..., n_latents=..., **fields)`, or '
           f"`saelab train STORE --architecture {name} --FIELD VALUE`")
    parts += ["## Config fields", "", how[0].upper() + how[1:] + ".", ""]
    if own:
        parts += [fields_table(cls.Config, own), ""]
    parts += ["Fields every dictionary has:", "", fields_table(cls.Config, base), ""]
    return "\n".join(parts)


def summary(obj: Any) -> str:
    """First sentence-line of a docstring, for index tables."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    first = inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if doc else ""
    return escape(first)


def dictionary_index() -> str:
    """The dictionaries' index page: every registered name with its one-line summary."""
    from saelab.dictionaries import get, names

    rows = []
    for name in names():
        module = inspect.getmodule(get(name))
        rows.append([f"[`{name}`]({name}.md)", summary(module) if module else ""])
    return "\n".join(["# Dictionaries", "",
                      "Every registered dictionary (`saelab.architectures()`), one page each, "
                      "generated from its code: its docstring (with the paper it implements), "
                      "what training needs, and its config fields with their defaults and help.",
                      "", table(["name", "what it is"], rows), ""])


# --- metric families ---------------------------------------------------------------------------
def _evaluate() -> Any:
    """The saelab.evaluate package (the name `saelab.evaluate` is also the function)."""
    return importlib.import_module("saelab.evaluate")


def metric_families() -> list[str]:
    """Registered metric family names (`saelab.evaluate.families()`)."""
    return list(_evaluate().families())


def metric_page(name: str) -> str:
    """The page of metric family `name`: its docstring, what it needs (and what to pass to
    `saelab.evaluate` for each need) and the figures it returns (contract 5:
    `saelab.evaluate.family(name)` with `needs`, `figures` and `headline`)."""
    ev = _evaluate()
    cls = ev.family(name)
    module = inspect.getmodule(cls)
    needs = [f"    - {code(n)}: {escape(ev.NEEDS.get(n, ''))}" for n in sorted(cls.needs)]
    headline = getattr(cls, "headline", ())
    return "\n".join([
        f"# `{name}`", "", docstring(module) if module else "", "", docstring(cls), "",
        "- **Needs**:", *needs,
        f"- **Figures**: {', '.join(code(f) for f in cls.figures)}",
        f"- **Printed in the report's summary**: {', '.join(code(f) for f in headline) or '-'}",
        "", f'Use it with `saelab.evaluate(sae, data, metrics=("{name}",))` or '
        f"`saelab eval SAE STORE --metrics {name}`; its figures are under `report[\"{name}\"]`.",
        ""])


def metric_index() -> str:
    """The metric families' index page."""
    ev = _evaluate()
    rows = []
    for name in metric_families():
        rows.append([f"[`{name}`]({name}.md)", summary(ev.family(name))])
    return "\n".join(["# Metric families", "",
                      "Every registered metric family (`saelab.evaluate.families()`), one page "
                      "each, generated from its code.", "", table(["family", "what it measures"],
                                                                 rows), ""])


# --- command line ------------------------------------------------------------------------------
def cli_reference() -> str:
    """The CLI reference: every subcommand of `saelab.cli.commands()` with its usage line and
    options (from the config dataclass; nested configs as dotted options); `train` also links
    each architecture's own fields."""
    from saelab import cli

    parts = ["# Command line reference", "",
             "Generated from the config dataclass behind each command "
             "(`saelab.cli.commands()`): every field is an option (`n_tokens` is "
             "`--n-tokens`, a field of a nested config is `--capture.n-tokens`), booleans also "
             "take `--no-...`, and `--config FILE` (JSON or YAML) reads the same fields, "
             "strictly; options on the command line win. `saelab COMMAND --help` prints the "
             "same.", ""]
    for name, command in sorted(cli.commands().items()):
        parts += [f"## `saelab {name}`", "", escape(command.help), ""]
        if dataclasses.is_dataclass(command.config):
            rows = cli_options(command.config)
            positional = " ".join(r[0].strip("`") for r in rows if not r[0].startswith("`-"))
            usage = f"saelab {name} [OPTIONS] {positional}".rstrip()
            parts += [f"```text\n{usage}\n```", "",
                      table(["argument or option", "type", "default", "help"], rows), ""]
        if name == "train":
            parts += [_architecture_fields(), ""]
    return "\n".join(parts)


def cli_options(cls: type, prefix: str = "", defaults: Any = None) -> list[list[str]]:
    """Rows (argument or option, type, default, help) for the fields of config dataclass `cls`,
    nested dataclasses flattened into dotted options; `defaults` is an instance whose values
    stand in for the class defaults (a nested config's own default)."""
    from saelab.config import field_help

    rows = []
    for f in dataclasses.fields(cls):
        nested = _nested_default(f, defaults)
        if nested is not None:
            rows += cli_options(type(nested), f"{prefix}{f.name}.", nested)
            continue
        if f.metadata.get("positional"):
            flag = code(f.name.upper())
        else:
            flag = code(f"--{prefix}{f.name.replace('_', '-')}")
        default = code(repr(getattr(defaults, f.name))) if defaults is not None \
            else field_default(f)
        choices = f.metadata.get("choices")
        kind = f"one of {', '.join(code(c) for c in choices())}" if choices else field_type(f)
        rows.append([flag, kind, default, escape(field_help(cls, f.name))])
    return rows


def _nested_default(f: dataclasses.Field, defaults: Any) -> Any:
    """The default instance of a field that holds a nested config dataclass, else None."""
    if defaults is not None:
        value = getattr(defaults, f.name)
    elif f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return None
    return value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None


def _architecture_fields() -> str:
    """`saelab train`'s per-architecture fields: a link to each dictionary's page."""
    from saelab.dictionaries import names

    links = ", ".join(f"[`{n}`](dictionaries/{n}.md#config-fields)" for n in names())
    return ("Each architecture adds its own fields (`saelab train STORE --architecture X "
            f"--help` lists them): {links}.")


# --- benchmarks ---------------------------------------------------------------------------------
def benchmark_table(path: str | Path) -> str:
    """A results file of bench/results/ (JSON with `title`, `command`, `date`, `columns`,
    `rows`, optionally `machine`, `notes`, `date_source`) as a Markdown table with its command
    and date."""
    path = Path(path)
    data = json.loads(path.read_text())
    missing = [k for k in ("command", "date", "columns", "rows") if k not in data]
    if missing:
        raise ValueError(f"{path}: results file lacks {', '.join(missing)}")
    date = data["date"] + (f" ({data['date_source']})" if data.get("date_source") else "")
    lines = [f"**{escape(data.get('title', path.stem))}**", "",
             f"- command: {code(data['command'])}", f"- date: {escape(date)}"]
    if data.get("machine"):
        lines.append(f"- machine: {escape(data['machine'])}")
    if data.get("notes"):
        lines.append(f"- setup: {escape(data['notes'])}")
    lines += [f"- data: `bench/results/{path.name}`", "", table(data["columns"], data["rows"]),
              ""]
    return "\n".join(lines)


def render_benchmarks(markdown: str, results: str | Path) -> str:
    """`markdown` with every `<!-- bench: NAME.json -->` replaced by that file's table."""
    return BENCH_MARKER.sub(lambda m: benchmark_table(Path(results) / m.group(1)), markdown)


# --- all generated pages ------------------------------------------------------------------------
def generated_pages() -> list[Page]:
    """Every generated page, in navigation order."""
    from saelab.dictionaries import names

    pages = [Page("dictionaries/index.md", "Overview", dictionary_index())]
    pages += [Page(f"dictionaries/{n}.md", n, dictionary_page(n)) for n in names()]
    pages.append(Page("metrics/index.md", "Overview", metric_index()))
    pages += [Page(f"metrics/{n}.md", n, metric_page(n)) for n in metric_families()]
    pages.append(Page("cli.md", "Command line", cli_reference()))
    return pages
