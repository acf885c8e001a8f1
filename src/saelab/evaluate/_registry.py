"""Name -> class registry of metric families. Looking a family up imports every sibling module of
this package whose name does not start with '_', so a family registers itself by existing."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
import sys
import textwrap
from typing import Callable, TypeVar

from saelab.errors import ConfigError
from saelab.evaluate._base import NEEDS, Family

_FAMILIES: dict[str, type[Family]] = {}
F = TypeVar("F", bound=type[Family])


def register(name: str) -> Callable[[F], F]:
    """Class decorator: register a Family subclass under `name`. Its declaration is checked
    here, so a family with an unknown need, or a headline or conditional figure it does not
    return, fails at import, not in the middle of an evaluation."""

    def wrap(cls: F) -> F:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"metric family {name!r} registered twice")
        unknown = set(cls.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric family {name!r} needs {sorted(unknown)}, which are not "
                             f"among {sorted(NEEDS)}")
        if not cls.figures or not set(cls.headline) <= set(cls.figures):
            raise ValueError(f"metric family {name!r} must declare its figures, and its "
                             f"headline must be among them")
        stray = [f for f in cls.conditional if f not in cls.figures]
        if stray:
            raise ValueError(f"metric family {name!r} declares conditional figures {stray} "
                             f"that are not among its figures {list(cls.figures)}")
        cls.name = name
        _FAMILIES[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    """Import every public module on the package's path (already imported ones are cached, so
    this is a directory listing; a module added to the path later is found on the next call)."""
    package = sys.modules[__package__]
    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")


def families() -> list[str]:
    """Registered metric family names, sorted."""
    _load_all()
    return sorted(_FAMILIES)


def family(name: str) -> type[Family]:
    """The family class registered under `name`; a ConfigError listing the known ones otherwise."""
    _load_all()
    if name not in _FAMILIES:
        close = difflib.get_close_matches(str(name), list(_FAMILIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown metric family {name!r}.{hint} "
                          f"Known families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def describe(name: str) -> str:
    """What family `name` measures, in one sentence: the first of its class docstring (of its
    module's when the class has none)."""
    cls = family(name)
    doc = cls.__dict__.get("__doc__") or getattr(inspect.getmodule(cls), "__doc__", None) or ""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    return re.split(r"(?<=[.?!])\s+(?=[A-Z])", paragraph, maxsplit=1)[0]


def families_help(width: int = 88) -> str:
    """Every registered family with what it measures (`describe`), wrapped to `width`
    columns: the list `saelab eval --help` shows."""
    names = families()
    pad = max(map(len, names), default=0) + 4
    lines = ["metric families (--metrics NAME ...):"]
    for name in names:
        lines += textwrap.wrap(describe(name), width, initial_indent=f"  {name:<{pad - 2}}",
                               subsequent_indent=" " * pad)
    return "\n".join(lines)
