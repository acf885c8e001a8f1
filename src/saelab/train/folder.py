"""A run folder and what saelab may do to it.

saelab knows the entries it writes in a run folder (`RUN_ENTRIES`); `--overwrite` removes those
and nothing else. `run.json`, written when a fresh run starts, records the run's identity, so
that a run killed before its first checkpoint is recognised and started afresh by the same
command instead of being refused. A folder is never cleared when it is, holds, or lies inside an
input of the run (an activation store being read).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

from saelab._paths import LOCK_FILE, folder_lock, write_json
from saelab.errors import ConfigError, OutputExistsError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""The identity of the run that owns the folder."""
RUN_ENTRIES = ("checkpoint", "metrics.jsonl", "sae", "tensorboard", "wandb", RUN_FILE)
"""Everything saelab writes in a run folder (besides `.NAME.*` temporaries of atomic writes)."""


def check_not_an_input(out: Path, inputs: list[str]) -> None:
    """Refuse an output folder that is, holds, or lies inside one of the run's `inputs`."""
    target = out.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            raise ConfigError(f"the run folder {out} overlaps the data it reads ({item}): "
                              f"choose an out folder outside it")


def prepare(out: Path, identity: dict, overwrite: bool) -> None:
    """Make `out` ready for a fresh run of `identity` (no checkpoint of it to resume): empty or
    absent, or holding only a run of the same identity killed before its first checkpoint, or
    (with `overwrite`) saelab's entries of another run, which are removed."""
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.exists() else []
    own = [p for p in entries if p.name in RUN_ENTRIES or _temporary(p)]
    foreign = sorted(p.name for p in entries if p not in own)
    if foreign and not overwrite:
        raise OutputExistsError(f"{out} holds files saelab did not write ({', '.join(foreign)}); "
                                f"choose an empty or new folder, or pass overwrite=True "
                                f"(--overwrite): saelab then leaves them and writes beside them")
    if own and not overwrite and read_identity(out) != _plain(identity):
        raise OutputExistsError(f"{out} already holds a run with other settings; pass "
                                f"overwrite=True (--overwrite) to replace it (only saelab's "
                                f"{', '.join(sorted(p.name for p in own))} are removed), or "
                                f"choose another folder")
    for p in own:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if foreign:
        log.warning("%s: leaving %s untouched (not saelab's)", out, ", ".join(foreign))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_FILE, _plain(identity))


def read_identity(out: Path) -> dict | None:
    """The identity recorded in `out/run.json`, None when absent or unreadable."""
    try:
        return json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def _plain(identity: dict) -> dict:
    return json.loads(json.dumps(identity))


def _temporary(p: Path) -> bool:
    """A leftover of an atomic write interrupted by a kill (`.NAME.*.tmp`, `.NAME.old-PID`)."""
    return p.name.startswith(".") and (p.name.endswith(".tmp") or ".old-" in p.name)


def locked(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on run folder `out` for the block (see `saelab._paths.folder_lock`):
    a second run into the same folder is refused, naming the process that holds it; a killed run
    leaves no stale lock. Check first that `out` is no input of the run: the lock file is
    written in it."""
    return folder_lock(out, "saelab run")
