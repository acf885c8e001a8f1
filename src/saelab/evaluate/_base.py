"""The metric-family contract: what a family needs, the context it is given, what it returns.

A family is one class in its own file under `saelab/evaluate/`, registered by name with
`@register("name")`. It declares

- `needs`: a frozenset drawn from NEEDS (what `evaluate` must be given for it to run; checked for
  every requested family before any work starts);
- `figures`: the names of the figures its result holds, exactly (a figure that cannot be computed
  on the data given is NaN, not left out);
- `headline`: the figures `format_report` prints (a subset of `figures`);
- `conditional`: the figures that are NaN unless a condition its docstring states holds (e.g.
  both dictionaries are ITDA), so that a NaN there is expected, not a failure.

It computes in one of two ways:

- streaming: `update(x, target, output)` per batch of the one shared pass over the activations,
  then `result()`; families that stream share that pass (the dictionary runs once per batch);
- its own pass: `run()`, which reads what it needs from `self.context` (the spliced loss runs the
  model).

`plot(out)` may write figures (PNG) next to report.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

import torch
from torch import Tensor, nn

NEEDS: dict[str, str] = {
    "activations": "data: activations to evaluate on (a tensor [N, d_in], (x, y) tensors for a "
                   "transcoder, an activation store or an iterable of batches)",
    "model": "model: the causal LM the dictionary was trained on (an nn.Module returning .logits)",
    "tokens": "tokens: token ids [N, T] of held-out contexts for the model",
    "labels": "labels: labelled texts",
    "other": "other: another dictionary to compare with, of the same input width (from the "
             "command line: --other DICTIONARY2)",
    "images": "data: an image activation store, whose rows know their image (capture one with "
              "`saelab capture --model vit-s14 --dataset digits`)",
}
"""What a family may need -> what to pass to `evaluate` to provide it."""


class Batch(NamedTuple):
    """One batch of the activation stream."""

    x: Tensor
    """What the dictionary reads [B, d_in]."""
    target: Tensor
    """What its output is compared with [B, d_out]: x itself for an SAE, the target activation
    for a transcoder."""


@dataclass(frozen=True, eq=False)
class Context:
    """Everything `evaluate` was given, as the families see it."""

    dictionary: nn.Module
    """The dictionary evaluated (in eval mode)."""
    batches: Callable[[], Iterable[Batch]] | None = None
    """A fresh iterator over the activation stream on each call; None without data."""
    data_mean: Tensor | None = None
    """Mean of the activation the dictionary's output stands for (the target of a transcoder)
    over the data [d_out], when the data can tell it (a store or tensors); else None."""
    model: nn.Module | None = None
    """The causal LM, for families that run it."""
    tokens: Tensor | None = None
    """Token ids [N, T] for the model."""
    hookpoint: str | None = None
    """Hookpoint the dictionary reads."""
    target_hookpoint: str | None = None
    """Hookpoint a transcoder predicts (None for an SAE)."""
    exclusion: Any = None
    """Exclusion rule (saelab.capture.exclude.Exclusion) of the positions the dictionary was not
    trained on; None keeps every position."""
    labels: Any = None
    """Labelled texts, for families that need them."""
    other: nn.Module | None = None
    """Another dictionary, for families that compare two (in eval mode)."""
    store: Any = None
    """The activation store (saelab.store.ActivationStore) the activations were read from, when
    they came from one; families that need its row metadata (an image store's image of each
    row) refuse in `check` without it."""
    batch_size: int = 4096
    """Rows per batch of the activation stream."""
    seed: int | None = None
    """Seed of any randomness (torch's RNG is seeded with it for the evaluation)."""
    progress: bool = False
    """Show progress bars."""

    def provides(self, need: str) -> bool:
        """Whether the need `need` (a key of NEEDS) is met."""
        if need == "images":
            return self.store is not None and "images" in self.store.manifest
        value = {"activations": self.batches, "model": self.model, "tokens": self.tokens,
                 "labels": self.labels, "other": self.other}[need]
        return value is not None


class Family:
    """Base of the metric families (see the module docstring)."""

    name: ClassVar[str] = ""
    """Registered name (set by `register`)."""
    needs: ClassVar[frozenset[str]] = frozenset({"activations"})
    """What the family needs (keys of NEEDS)."""
    figures: ClassVar[tuple[str, ...]] = ()
    """Names of the figures `run()` returns, exactly."""
    headline: ClassVar[tuple[str, ...]] = ()
    """Figures shown by `format_report`."""
    conditional: ClassVar[tuple[str, ...]] = ()
    """Figures that are NaN unless a condition stated in the docstring holds (a subset of
    `figures`); every other figure is finite on data the family accepts."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @classmethod
    def check(cls, context: Context) -> None:
        """Refuse (ConfigError) before any work when the context cannot serve this family beyond
        its `needs` (e.g. a hookpoint it must have); the default accepts."""

    @classmethod
    def streams(cls) -> bool:
        """Whether the family computes from the shared activation pass (defines `update`)."""
        return cls.update is not Family.update

    def update(self, x: Tensor, target: Tensor, output: NamedTuple) -> None:
        """Streaming families: take one batch (`output` is the dictionary's forward of x)."""
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        """Streaming families: the figures after the last batch."""
        raise NotImplementedError

    @torch.no_grad()
    def run(self) -> dict[str, float]:
        """The figures. Families with their own pass override this; the default streams the
        context's activations through `update` and returns `result()`."""
        for x, target in self.context.batches():
            self.update(x, target, self.context.dictionary(x))
        return self.result()

    def plot(self, out: Path) -> list[Path]:
        """Write this family's plots into the folder `out`; return their paths."""
        return []
