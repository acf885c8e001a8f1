"""Configuration as data: dataclass fields carry their help text, and the same classes drive the
Python API, the CLI and the saved cfg.json.

`build(cls, values)` is the one strict way in from data (a config file, cfg.json, keyword
arguments): an unknown key is refused with a did-you-mean, and a value of the wrong type is
refused naming the field and the type it expects (checked by typeguard, against the field's
annotation: `Literal[...]` choices, `int | None`, `list[str]`, nested config dataclasses).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from saelab.errors import ConfigError

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a one-line help text (shown by `--help`).

    Extra keywords go into the field's metadata: `positional=True` makes it a positional
    argument of the command line; `choices=fn` names a function returning the allowed values
    when they are only known at run time (registered architectures, metric families)."""
    metadata = {"help": help, **kwargs}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def required(help: str, **kwargs: Any) -> Any:
    """A dataclass field without default, with a one-line help text (keywords as `option`)."""
    return dataclasses.field(metadata={"help": help, **kwargs})


def field_help(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls`."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    return ""


def build(cls: type[T], values: dict[str, Any], what: str | None = None) -> T:
    """Build dataclass `cls` from `values`, strictly: unknown keys, values of the wrong type and
    missing required fields are a ConfigError that names them. A nested config dataclass may be
    given as a dict (its keys override the field's default); JSON lists are accepted for tuple
    fields."""
    what = what or cls.__name__
    typed = check_fields(cls, values, what)
    try:
        return cls(**typed)
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None


def check_fields(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """`values` checked against the fields of dataclass `cls` (known names, right types), without
    building `cls`: what `build` checks, for values that are only part of a config."""
    if not isinstance(values, dict):
        raise ConfigError(f"{what}: expected a mapping of field values, got "
                          f"{type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_known(values, list(fields), what)
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        where = f"{what}: field {name!r}"
        out[name] = check_value(value, hints[name], where, default_of(fields[name]))
        check_choice(value, fields[name].metadata.get("choices"), where)
    return out


def check_choice(value: Any, choices: Any, where: str) -> None:
    """Refuse a `value` (or an item of a list value) not among `choices()`, a field's run-time
    choices (registered architectures, metric families), with a did-you-mean."""
    if choices is None or value is None:
        return
    allowed = list(choices())
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item not in allowed:
            close = difflib.get_close_matches(str(item), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} expects one of {', '.join(allowed)}; got "
                              f"{item!r}{hint}")


def default_of(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (a fresh one for a factory); MISSING if none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def check_known(values: dict[str, Any], names: list[str], what: str) -> None:
    """Refuse keys of `values` that are not in `names`, with a did-you-mean for each."""
    unknown = [k for k in values if k not in names]
    if not unknown:
        return
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), names, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"unknown field(s) for {what}: {', '.join(hints)}. "
                      f"Known fields: {', '.join(names)}")


def check_value(value: Any, hint: Any, where: str, default: Any = None) -> Any:
    """`value` if it fits the annotation `hint` (a dict for a nested dataclass is built over
    `default`, a list for a tuple becomes a tuple); else a ConfigError `where` expects <type>,
    got <value>."""
    nested = _dataclass_of(hint)
    if nested is not None and isinstance(value, dict):
        base = ({f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
                if isinstance(default, nested) else {})
        return build(nested, {**base, **value}, what=where)
    if isinstance(value, list) and _tuple_of(hint):
        value = tuple(value)
    if isinstance(value, bool) and not _allows_bool(hint):
        raise ConfigError(f"{where} expects {type_name(hint)}, got bool {value!r}")
    try:
        check_type(value, hint, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
    except TypeCheckError:
        raise ConfigError(f"{where} expects {type_name(hint)}, got {type(value).__name__} "
                          f"{value!r}") from None
    return value


def type_name(hint: Any) -> str:
    """A readable name of a field annotation: `int | None`, `one of 'fp32', 'bf16'`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(hint, "__name__", str(hint))


def _members(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _dataclass_of(hint: Any) -> type | None:
    return next((m for m in _members(hint) if dataclasses.is_dataclass(m)), None)


def _tuple_of(hint: Any) -> bool:
    return any(m is tuple or typing.get_origin(m) is tuple for m in _members(hint))


def _allows_bool(hint: Any) -> bool:
    return any(m is bool or m is Any or typing.get_origin(m) is Literal and
               any(isinstance(a, bool) for a in typing.get_args(m)) for m in _members(hint))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file (JSON, or YAML for .yaml/.yml) into a dict of field values."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field values")
    return data


def _yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None


def check(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming `field` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


DEVICE_KINDS = ("auto", "cpu", "cuda", "mps", "xpu")
"""What a `device` option accepts before an optional `:N`."""


def check_device(value: str | None, field: str = "device") -> None:
    """A ConfigError unless `value` is None, auto, cpu, cuda, cuda:N (or mps, xpu)."""
    check(value is None or isinstance(value, str) and value.split(":")[0] in DEVICE_KINDS, field,
          f"must be auto, cpu, cuda or cuda:N (or mps, xpu), got {value!r}")


def torch_device(value: str, field: str = "device"):
    """The torch.device a `device` option names: auto is cuda when a GPU is visible, else cpu;
    cuda on a torch without a GPU is a ConfigError saying what to do."""
    import torch

    check_device(value, field)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{field}: {value!r} asked, but this torch ({torch.__version__}) sees no "
                          f"CUDA GPU; use cpu or auto (--{field.replace('_', '-')} cpu), or "
                          f"install a CUDA build of torch on a machine with a GPU")
    return torch.device(value)

