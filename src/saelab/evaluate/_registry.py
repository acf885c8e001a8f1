"""Name -> class registry of metric families. Looking a family up imports every sibling module of
this package whose name does not start with '_', so a family registers itself by existing."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from typing import Callable, TypeVar

from saelab.errors import ConfigError
from saelab.evaluate._base import NEEDS, Family

_FAMILIES: dict[str, type[Family]] = {}
F = TypeVar("F", bound=type[Family])


def register(name: str) -> Callable[[F], F]:
    """Class decorator: register a Family subclass under `name`. Its declaration is checked
    here, so a family with an unknown need or a headline figure it does not return fails at
    import, not in the middle of an evaluation."""

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
