"""Name -> class registry of dictionaries. Importing this module imports every sibling module, so
a variant registers itself by existing."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import Callable, TypeVar

from saelab.errors import ConfigError

_REGISTRY: dict[str, type] = {}
_loaded = False
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a Dictionary subclass under `name`."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} registered twice")
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove `name` from the registry (for a throwaway variant registered by a test or a
    notebook); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    package = __name__.rpartition(".")[0]  # the folder of this file, without importing it
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
    _loaded = True


def names() -> list[str]:
    """Registered architecture names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The class registered under `name`; a ConfigError listing the known names otherwise."""
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown architecture {name!r}.{hint} "
                          f"Known architectures: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
