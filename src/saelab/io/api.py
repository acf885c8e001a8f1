"""`load` from anywhere (a local folder in any known format, an `hf://` address, the name of a
release) and `convert` between formats: what `saelab.load` and `saelab convert` call."""

from __future__ import annotations

from pathlib import Path

from saelab._paths import write_safetensors
from saelab.errors import ConfigError, OutputExistsError
from saelab.io import registry, saelens, saelens_write
from saelab.io.detect import load_folder, save
from saelab.io.hub import resolve


def load(path: str | Path, *, hookpoint: str | None = None,
         norm_scaling_factor: float | None = None, format: str | None = None):
    """Load a dictionary from a folder in any known format, an `hf://owner/repo/path` address,
    or the name of a release in `saelab.io.registry`.

    hookpoint: the sub-folder of a multi-hookpoint (sparsify) folder. norm_scaling_factor: for
    SAELens' `expected_average_only_in` normalisation (see `saelens.load`). format: skip the
    detection.
    """
    text = str(path)
    if text.startswith("hf://"):
        path = resolve(text, hookpoint=hookpoint)
        hookpoint = None
    elif not Path(text).exists() and text in registry.RELEASES:
        return registry.load_release(text)
    path = Path(path)
    if hookpoint is not None:
        path = path / hookpoint
    return load_folder(path, format, norm_scaling_factor)


def convert(src: str | Path, dst: str | Path, to: str, *, hookpoint: str | None = None,
            norm_scaling_factor: float | None = None, overwrite: bool = False) -> Path:
    """Read `src` (any known format) and write it to `dst` in format `to`. SAELens' sparsity
    file travels with the dictionary between SAELens and saelab folders. An existing `dst` is
    replaced only with `overwrite`; a `dst` that is, holds or lies inside `src` is refused."""
    check_destination(src, dst, overwrite)
    dictionary = load(src, hookpoint=hookpoint, norm_scaling_factor=norm_scaling_factor)
    src_dir = Path(src) / hookpoint if hookpoint and not str(src).startswith("hf://") else \
        Path(str(src))
    sparsity = saelens.read_sparsity(src_dir) if src_dir.is_dir() else None
    if to == "saelens":
        return saelens_write.save(dictionary, dst, sparsity=sparsity)
    out = save(dictionary, dst, to)
    if sparsity is not None and to == "saelab":
        write_safetensors(Path(out) / saelens.SPARSITY, {"sparsity": sparsity})
    return out


def check_destination(src: str | Path, dst: str | Path, overwrite: bool) -> None:
    """Refuse to write a conversion over its own source, or over an existing folder unless
    `overwrite` (nothing is read or written before this check)."""
    target = Path(dst).resolve()
    if not str(src).startswith("hf://"):
        source = Path(src).resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            raise ConfigError(f"the destination {dst} overlaps the source {src}: converting "
                              f"would replace what it reads; choose a new folder")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists; choose a new folder, or pass overwrite=True "
                                f"(--overwrite) to replace it")
