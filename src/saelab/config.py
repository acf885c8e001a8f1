"""Configuration as data: dataclass fields carry their help text, and the same classes drive the
Python API, the CLI and the saved cfg.json."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, TypeVar

from saelab.errors import ConfigError

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a one-line help text (shown by `--help`)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def required(help: str) -> Any:
    """A dataclass field without default, with a one-line help text."""
    return dataclasses.field(metadata={"help": help})


def field_help(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls`."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    return ""


def build(cls: type[T], values: dict[str, Any], what: str | None = None) -> T:
    """Build dataclass `cls` from `values`, with a clear error for unknown or missing fields."""
    names = [f.name for f in dataclasses.fields(cls)]
    what = what or cls.__name__
    unknown = [k for k in values if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown field(s) for {what}: {', '.join(hints)}. "
                          f"Known fields: {', '.join(names)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file into a dict of field values."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of field values")
    return data


def check(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming `field` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
