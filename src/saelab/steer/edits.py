"""Edits of a dictionary's codes: what a steering intervention changes.

An edit maps the codes [N, n_latents] of the rows at a hookpoint to new codes; the intervention
(`saelab.steer.Steering`) decodes both and adds the difference to the activation, so that the
dictionary's error term is kept and only what the edit names changes. Edits of one intervention
apply in order to the same codes.

- `add(f, s)`: code f += s, which adds s times f's decoder direction (activation steering with a
  dictionary atom, as in Templeton et al. 2024, "Scaling Monosemanticity", and the SAE steering
  of Goyal et al. 2025, "Breaking Bad Tokens: Detoxification of LLMs Using Sparse Autoencoders");
- `clamp(f, v)`: code f := v;
- `scale(fs, c)`: codes fs *= c; `ablate(fs)`: codes fs := 0.

`where="active"` limits an edit to the rows where the feature already fires (code > 0): the least
aggressive tier of "Breaking Bad Tokens", which steers only tokens that carry the concept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor

from saelab.errors import ConfigError

MODES = ("add", "clamp", "scale")
WHERE = ("all", "active")


class CodeEdit(Protocol):
    """What an intervention applies: the features it names and how it changes their codes."""

    features: tuple[int, ...]

    def apply(self, codes_NL: Tensor) -> Tensor:
        """New codes [N, n_latents] from codes [N, n_latents] (the input is not modified)."""
        ...


@dataclass(frozen=True)
class Edit:
    """A change to the codes of some features at every row (or every row where they fire)."""

    features: tuple[int, ...]
    """Indices of the latents changed."""
    mode: Literal["add", "clamp", "scale"]
    """"add": code += value; "clamp": code := value; "scale": code *= value."""
    value: float
    """The strength added, the value clamped to, or the factor."""
    where: Literal["all", "active"] = "all"
    """"all" rows, or only the rows where the feature's code is positive."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown edit mode {self.mode!r}; modes: {', '.join(MODES)}")
        if self.where not in WHERE:
            raise ConfigError(f"unknown edit place {self.where!r}; one of {', '.join(WHERE)}")
        if not self.features:
            raise ConfigError("an edit needs at least one feature")

    def apply(self, codes_NL: Tensor) -> Tensor:
        out = codes_NL.clone()
        index = list(self.features)
        old_NF = codes_NL[:, index]
        if self.mode == "add":
            new_NF = old_NF + self.value
        elif self.mode == "clamp":
            new_NF = old_NF.new_full(old_NF.shape, self.value)
        else:
            new_NF = old_NF * self.value
        if self.where == "active":
            new_NF = new_NF.where(old_NF > 0, old_NF)
        out[:, index] = new_NF
        return out


def _features(features: int | Iterable[int]) -> tuple[int, ...]:
    return (int(features),) if isinstance(features, int) else tuple(int(f) for f in features)


def add(features: int | Iterable[int], strength: float, where: str = "all") -> Edit:
    """Add `strength` to the codes of `features` (their decoder directions, scaled)."""
    return Edit(_features(features), "add", float(strength), where)  # type: ignore[arg-type]


def clamp(features: int | Iterable[int], value: float, where: str = "all") -> Edit:
    """Set the codes of `features` to `value`."""
    return Edit(_features(features), "clamp", float(value), where)  # type: ignore[arg-type]


def scale(features: int | Iterable[int], factor: float, where: str = "all") -> Edit:
    """Multiply the codes of `features` by `factor`."""
    return Edit(_features(features), "scale", float(factor), where)  # type: ignore[arg-type]


def ablate(features: int | Iterable[int]) -> Edit:
    """Set the codes of `features` to 0 (scale by 0)."""
    return Edit(_features(features), "scale", 0.0)


def check_features(features: Iterable[int], n_latents: int) -> None:
    """Refuse a feature index the dictionary does not have (a ConfigError naming it)."""
    for f in features:
        if not 0 <= f < n_latents:
            raise ConfigError(f"feature {f} is out of range: the dictionary has {n_latents} "
                              f"latents (features 0 to {n_latents - 1})")
