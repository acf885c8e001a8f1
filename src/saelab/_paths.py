"""Small filesystem helpers shared by every stage: the cache folder and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from saelab.errors import DataError, MissingDependencyError, OutputExistsError


def cache_dir() -> Path:
    """saelab's cache folder: $SAELAB_CACHE, else ~/.cache/saelab (created on demand)."""
    path = Path(os.environ.get("SAELAB_CACHE") or Path.home() / ".cache" / "saelab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_file(package: str, relative: str, what: str, install: str) -> Path:
    """The file `relative` inside the installed Python package `package` (found without
    importing it: some packaged assets' __init__ needs libraries saelab does not), or a
    MissingDependencyError ("`what` needs the Python package ...: run `install`") when the package
    is absent, a DataError when it lacks the file."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{what} needs the Python package {package}: run "
                                     f"`{install}`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DataError(f"{path} is missing: reinstall the package with `{install}`")
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    Works for files and folders alike: whatever the block writes at the yielded path replaces
    `final` in one rename, so a crash never leaves a half-written file under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


LOCK_FILE = ".lock"
"""Held (flock) by the process writing a run folder or a store; never removed, so that a process
waiting on it keeps the same inode."""


@contextlib.contextmanager
def folder_lock(out: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on folder `out` for the block (created if missing): a second
    process asking for it is refused with an OutputExistsError naming the holder's process id.
    The lock is the operating system's (flock on `out/.lock`), so a killed process leaves no
    stale lock behind. `what` names the kind of writer in the message ("saelab run")."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise OutputExistsError(f"{out} is in use by another {what} (process {holder}); "
                                    f"wait for it to end, or choose another folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recover_swap(final: str | os.PathLike) -> bool:
    """Finish what a kill in the middle of `atomic_path`'s folder swap left behind, for a folder
    no other process is writing (a locked run folder). Between the swap's two renames `final` is
    missing and its previous version sits at `.NAME.old-PID`: that version is intact, and is put
    back (True). A leftover `.NAME.old-PID` beside an existing `final` (killed after the second
    rename) and the temporary `.NAME.*.tmp` folders are removed."""
    final = Path(final)
    olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    recovered = False
    if olds and not final.exists():
        os.replace(olds.pop(), final)
        recovered = True
    for leftover in [*olds, *final.parent.glob(f".{final.name}.*.tmp")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return recovered


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically (contiguous copies, shared storage broken)."""
    clean = {name: t.detach().contiguous().clone() if _shares_storage(t, tensors) else
             t.detach().contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(clean, str(tmp), metadata=metadata)
        except SafetensorError as e:  # an I/O error reaches us as text: give it back its errno
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e


def _shares_storage(t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(o.untyped_storage().data_ptr() == ptr for o in tensors.values()) > 1
