"""The variants' own format declarations (`Dictionary.formats`, see
saelab.dictionaries._formats), looked up by the SAELens and sparsify readers and writers, and the
renaming of tensors they declare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from saelab.dictionaries import get, names
from saelab.dictionaries._formats import FORMAT_NAMES
from saelab.errors import FormatError


def declared(cls: type, fmt: str) -> Any:
    """The mapping `cls` declares for format `fmt` in its own class body (never inherited), or
    None."""
    return vars(cls).get("formats", {}).get(fmt)


def declarations(fmt: str) -> dict[str, Any]:
    """saelab architecture -> its mapping to `fmt`, for every registered variant that has one."""
    out = {}
    for name in names():
        mapping = declared(get(name), fmt)
        if mapping is not None:
            out[name] = mapping
    return out


def formats_of(architecture: str) -> list[str]:
    """The formats a saelab architecture converts to: saelab's own, then those it declares."""
    return ["saelab"] + [FORMAT_NAMES[f] for f in vars(get(architecture)).get("formats", {})]


def mapping_to(dictionary, fmt: str) -> Any:
    """The mapping of `dictionary` to format `fmt`; a FormatError naming the formats its
    architecture does convert to, and what the format takes, otherwise."""
    arch = dictionary.architecture
    mapping = declared(get(arch), fmt)
    if mapping is None:
        library = FORMAT_NAMES[fmt]
        raise FormatError(f"{library} has no counterpart of saelab's {arch!r}; {arch!r} converts "
                          f"to {', '.join(formats_of(arch))} only, and saelab writes "
                          f"{', '.join(declarations(fmt))} to {library}")
    return mapping


def refuse_unfixed(dictionary, mapping, fmt: str) -> None:
    """Refuse a dictionary whose config differs from what the format's mapping implies
    (`mapping.fixed`), naming the field and the formats that do take it."""
    for name, value in mapping.fixed.items():
        actual = getattr(dictionary.cfg, name)
        if actual == value:
            continue
        formats = vars(get(dictionary.architecture)).get("formats", {})
        takers = [FORMAT_NAMES[f] for f, m in formats.items() if m.fixed.get(name, actual) == actual]
        raise FormatError(f"{FORMAT_NAMES[fmt]}'s {getattr(mapping, 'architecture', fmt)!r} "
                          f"takes {name}={value!r} only; this {dictionary.architecture} has "
                          f"{name}={actual!r}. Write it to {', '.join(takers + ['saelab'])} "
                          "instead")


def expected_shapes(dictionary, tensors: Mapping[str, str],
                    transposed: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    """The file's tensor name -> the shape `dictionary` implies for it (reversed for the names
    in `transposed`)."""
    state = dictionary.state_dict()
    return {theirs: tuple(reversed(state[ours].shape)) if theirs in transposed
            else tuple(state[ours].shape) for theirs, ours in tensors.items()}


def renamed_in(raw: dict[str, Tensor], tensors: Mapping[str, str],
               transposed: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """A file's tensors under saelab's names (`tensors`: theirs -> ours), transposing those in
    `transposed`."""
    return {ours: raw[theirs].t().contiguous() if theirs in transposed else raw[theirs]
            for theirs, ours in tensors.items()}


def renamed_out(state: dict[str, Tensor], tensors: Mapping[str, str],
                transposed: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """saelab's state under the file's names, transposing those in `transposed`."""
    return {theirs: state[ours].t().contiguous() if theirs in transposed else state[ours]
            for theirs, ours in tensors.items()}
