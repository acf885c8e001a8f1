"""Config dataclasses -> tyro command lines and strict config files (see `saelab.cli` for why tyro).

`parse_config` builds, per call, a dataclass for tyro from a command's config dataclass (for
`train`: the command's own fields, the chosen architecture's fields and TrainConfig's), with a
config file's values, checked strictly, as the defaults that the command line then overrides.
A config class may define `help_details()` (a static method): text `--help` shows after the
command's one-line description, generated when asked (`saelab eval` lists its metric families).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from saelab.config import (build, check_fields, check_known, default_of, load_config_file,
                           option, required)

CONFIG_HELP = ("Read option values from a JSON or YAML file (strict: unknown keys and wrong "
               "types are refused); options on the command line win.")

Sources = list[tuple[type, frozenset[str]]]
"""Where a command line's fields come from: dataclasses, each with the field names it skips."""


# --- the config of `saelab train` -----------------------------------------------------------------
def _architectures() -> list[str]:
    from saelab.dictionaries import names

    return names()


def _train_config() -> type:
    from saelab.train import TrainConfig

    return TrainConfig


@functools.lru_cache(maxsize=None)
def train_command() -> type:
    """TrainConfig plus what `saelab train` adds: the store, the architecture, its size."""
    TrainConfig = _train_config()

    @dataclass(kw_only=True)
    class TrainCommand(TrainConfig):
        """Train a dictionary on an activation store (data parallel under torchrun)."""

        store: str = required("Activation store folder (from `saelab capture`).",
                              positional=True)
        architecture: str = option("topk", "Dictionary architecture; `--architecture X --help` "
                                           "lists X's fields.", choices=_architectures)
        n_latents: int = option(4608, "Number of latents.")
        hookpoints: list[str] | None = option(None, "Train one dictionary per hookpoint, each in "
                                                    "its own folder under OUT; under torchrun "
                                                    "the hookpoints are shared out over the "
                                                    "ranks (layer parallel).")

    return TrainCommand


# --- dataclass -> tyro ---------------------------------------------------------------------------
def _cli_hint(hint: Any, f: dataclasses.Field) -> Any:
    """The annotation tyro sees: `str` becomes a Literal of the field's run-time choices."""
    choices = f.metadata.get("choices")
    if choices is None:
        return hint
    literal = Literal[tuple(choices())]  # type: ignore[misc]
    if hint is str:
        return literal
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return list[literal]
    if args and type(None) in args:  # X | None
        return _cli_hint(next(a for a in args if a is not type(None)), f) | None
    return hint


def _cli_dataclass(name: str, sources: Sources, defaults: dict[str, Any],
                   with_config: bool) -> type:
    """A dataclass for tyro with the fields of `sources` (minus their skipped names), their help
    and positional flags from the field metadata, and `defaults` (from a config file) over the
    fields' own defaults."""
    import tyro

    fields = []
    for cls, skip in sources:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                fields.append(_cli_field(f, hints[f.name], defaults))
    if with_config:
        fields.append(("config", Annotated[str | None, tyro.conf.arg(help=CONFIG_HELP)],
                       dataclasses.field(default=None)))
    return dataclasses.make_dataclass(name, fields, kw_only=True)


def _cli_field(f: dataclasses.Field, hint: Any, defaults: dict[str, Any]) -> tuple:
    """One field of the dataclass for tyro: (name, annotated type, field with its default);
    a nested config becomes a nested dataclass for tyro with its own defaults."""
    import tyro

    hint = _cli_hint(hint, f)
    default = defaults.get(f.name, default_of(f))
    if dataclasses.is_dataclass(hint):
        hint = _cli_dataclass(hint.__name__, [(hint, frozenset())], _field_values(default), False)
        default = hint(**_field_values(default)) if default is not None else default
    positional = f.metadata.get("positional")
    marks = [tyro.conf.arg(help=f.metadata.get("help", ""),
                           metavar=f.name.upper() if positional else None)]
    if positional:
        marks.append(tyro.conf.Positional)
    return f.name, Annotated[(hint, *marks)], _field(default)


def _field_values(obj: Any) -> dict[str, Any]:
    """A dataclass instance's field values (not recursively); {} for anything else."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {}


def _field(default: Any) -> dataclasses.Field:
    if default is dataclasses.MISSING:
        return dataclasses.field()
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default))
    return dataclasses.field(default=default)


def _plain(parsed: Any) -> dict[str, Any]:
    """tyro's result as a dict of field values (nested configs as dicts), without `config`."""
    values = dataclasses.asdict(parsed)
    values.pop("config", None)
    return values


# --- parsing -------------------------------------------------------------------------------------
def _peek(argv: list[str], flag: str) -> str | None:
    """The value of option `flag` in a command's arguments, if given (read before parsing: the
    config file and the architecture decide which options exist)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def parse_config(name: str, cls: type, description: str,
                 argv: list[str]) -> tuple[Any, dict]:
    """Parse the arguments of command `name`, whose options are the fields of `cls`: (its
    config, for `train` the dictionary's fields)."""
    import tyro

    path = _peek(argv, "--config")
    file = load_config_file(path) if path else {}
    sources: Sources = [(cls, frozenset())]
    arch = None
    if name == "train":
        arch = _peek(argv, "--architecture") or file.get("architecture") or "topk"
        sources = _train_sources(cls, arch)
    what = f"config file {path}" + (f" (train, architecture {arch!r})" if arch else "")
    defaults = _checked(sources, file, what)
    parser_cls = _cli_dataclass(f"saelab_{name}", sources, defaults, True)
    details = getattr(cls, "help_details", None)  # e.g. the metric families, from their registry
    if details is not None:
        description = f"{description}\n\n{details()}"
    parsed = _plain(tyro.cli(parser_cls, args=argv, prog=f"saelab {name}",
                             description=description))
    if name != "train":
        return build(cls, parsed, what=f"saelab {name}"), {}
    dictionary_names = {f.name for f in dataclasses.fields(sources[1][0])} - sources[1][1]
    dictionary = {k: v for k, v in parsed.items() if k in dictionary_names}
    command = build(cls, {k: v for k, v in parsed.items() if k not in dictionary_names},
                    what="saelab train")
    return command, dictionary


def _train_sources(cls: type, arch: str) -> Sources:
    """The field sources of `saelab train --architecture arch`: the command's own fields first,
    then the architecture's (minus d_in, n_latents), then TrainConfig's."""
    from saelab.dictionaries import get, names

    own = frozenset(f.name for f in dataclasses.fields(cls)) - frozenset(
        f.name for f in dataclasses.fields(_train_config()))
    dictionary = get(arch if arch in names() else "topk").Config
    return [(cls, frozenset(f.name for f in dataclasses.fields(cls)) - own),
            (dictionary, frozenset({"d_in", "n_latents"})),
            (_train_config(), frozenset())]


def _checked(sources: Sources, file: dict, what: str) -> dict:
    """The config file's values, checked strictly against the fields of `sources`."""
    known = [f.name for cls, skip in sources for f in dataclasses.fields(cls)
             if f.name not in skip]
    unknown = {k: v for k, v in file.items() if k not in known}
    if unknown:
        check_known(unknown, known, what)
    out: dict = {}
    for cls, skip in sources:
        mine = {k: v for k, v in file.items() if k in
                {f.name for f in dataclasses.fields(cls)} - skip}
        out.update(check_fields(cls, mine, what))
    return out
