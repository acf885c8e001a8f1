"""Which hookpoint of an activation store a dictionary is read at.

A dictionary records in its provenance the hookpoint it was trained on. Evaluating it or building
its dashboard on a store that lacks that hookpoint would read another activation (another layer,
another site) and report figures that mean nothing, so it is refused unless asked for on purpose.
(Defined here, below `saelab.evaluate` in the layers, so that the dashboard builder can use it;
`saelab.evaluate.check_hookpoint` is the same function.)
"""

from __future__ import annotations

import logging
from typing import Sequence

from saelab.capture import Hookpoint
from saelab.capture.gradients import is_gradient_key
from saelab.errors import ConfigError

log = logging.getLogger(__name__)

MISMATCH_HINT = ("allow the mismatch on purpose (--allow-hookpoint-mismatch on the command line, "
                 "allow_hookpoint_mismatch=True in saelab.evaluate and dashboard_from_store)")
"""How to proceed on purpose, as the refusal says it."""


def _same(a: str, b: str) -> bool:
    return Hookpoint.parse(a).key == Hookpoint.parse(b).key


def _default(trained: str | None, store_hookpoints: Sequence[str]) -> str | None:
    """The dictionary's hookpoint when the store has it, else the store's only activation."""
    if trained is not None:
        found = [k for k in store_hookpoints if _same(k, trained)]
        if found:
            return found[0]
    acts = [k for k in store_hookpoints if not is_gradient_key(k)]
    return acts[0] if len(acts) == 1 else None


def check_hookpoint(dictionary, store_hookpoints: Sequence[str], hookpoint: str | None = None,
                    allow_mismatch: bool = False) -> str:
    """The store hookpoint to read for `dictionary`: `hookpoint` if given, else the one the
    dictionary was trained on (its provenance 'hookpoint'), else the store's only one.

    A hookpoint other than the dictionary's own is refused with a ConfigError naming both,
    unless `allow_mismatch`, which proceeds with a logged warning. A `hookpoint` the store does
    not hold, or a store of several hookpoints none of which can be chosen, is a ConfigError.
    """
    store_hookpoints = list(store_hookpoints)
    held = ", ".join(map(repr, store_hookpoints)) or "nothing"
    if hookpoint is not None and hookpoint not in store_hookpoints:
        raise ConfigError(f"the store has no hookpoint {hookpoint!r}; it holds {held}")
    trained = getattr(dictionary, "provenance", {}).get("hookpoint")
    chosen = hookpoint or _default(trained, store_hookpoints)
    if chosen is None:
        what = (f"the dictionary was trained on hookpoint {trained!r}, which the store lacks (it "
                f"holds {held}); name the hookpoint to read and {MISMATCH_HINT}" if trained else
                f"the store holds several hookpoints ({held}); pass the hookpoint to read")
        raise ConfigError(what)
    if trained is not None and not _same(chosen, trained):
        lacks = not any(_same(k, trained) for k in store_hookpoints)
        message = (f"the dictionary was trained on hookpoint {trained!r}, but "
                   + (f"the store holds {held}" if lacks else f"{chosen!r} was asked for"))
        if not allow_mismatch:
            fix = (f"use a store captured at {trained!r}" if lacks else
                   f"read {trained!r} (leave the hookpoint out)")
            raise ConfigError(f"{message}; {fix}, or {MISMATCH_HINT}")
        log.warning("%s (allowed by allow_mismatch)", message)
    return chosen
