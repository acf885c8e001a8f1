"""What training reads: any kind of data (a store, tensors, a live model, an iterable of batches)
turned into one `Source` of row-aligned batches that feeds one or more dictionaries.

`saelab.store.open_source(data, wants, cfg, group)` (adapters.py) takes one `Want` per
dictionary (its hookpoint, width, target, whether it needs loss gradients) and returns a
`Source`: batches from any global batch index on, batches per epoch, and one `Feed` per
dictionary saying where its tensors sit in each batch. A store or a model is read once per
batch for every dictionary. Under data parallelism (a `group` of several ranks, see
saelab.train.distributed) each batch is this rank's share.

The kinds of data (see adapters.py for each):
- an activation store (folder or ActivationStore): the hookpoints the dictionaries name;
- a tensor [N, d_in], an (x, target) tuple, `Labelled(x, labels)`, `WithGradients(x, grads)`;
- `{hookpoint: tensor [N, d]}`, row-aligned tensors in memory;
- `LiveSource(model, tokens)`: activations captured while training, no disk;
- any iterable of batches: tensors, (x, target) tuples, or `{hookpoint: tensor}` dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saelab.capture import BATCH_CONTEXTS
from saelab.capture.exclude import NORM_FACTOR
from saelab.errors import DataError

Batch = tuple[Tensor, ...]


@dataclass(frozen=True)
class Labelled:
    """Rows with per-row concept labels, for dictionaries trained with supervision (`guided`):
    `fit(sae, Labelled(x, labels))`. The loop passes each batch's labels to the loss as
    `StepState.extra["labels"]`."""

    x: Tensor | tuple[Tensor, ...]
    """Rows [N, d_in], or an (x, target) tuple."""
    labels: Tensor
    """[N, n_concepts], values in [0, 1] (1: the concept is present)."""


@dataclass(frozen=True)
class WithGradients:
    """Rows with the gradient of the model's loss with respect to each row, for gradient-guided
    dictionaries (`gsae_gradient`): `fit(sae, WithGradients(x, grads))`. The loop passes each
    batch's gradients to the loss as `StepState.extra["grads"]`."""

    x: Tensor | tuple[Tensor, ...]
    """Rows [N, d_in], or an (x, target) tuple."""
    grads: Tensor
    """d(loss)/d(x) [N, d_in] (e.g. from saelab.capture.gradients.activation_gradients)."""


@dataclass
class LiveSource:
    """Activations captured from a model while training (no disk): one forward per
    `batch_contexts` contexts feeds every dictionary, stopped after the deepest hookpoint."""

    model: nn.Module
    """The model whose hookpoints are read."""
    tokens: Tensor
    """Contexts [N, T] of token ids, read once in order."""
    model_name: str = "model"
    """Name recorded in each dictionary's provenance."""
    batch_contexts: int = BATCH_CONTEXTS
    """Contexts per model forward."""
    buffer_rows: int = 1 << 16
    """Rows held in the shuffling buffer."""
    special_ids: list[int] | None = None
    """Token ids left out (BOS, EOS, separators)."""
    norm_factor: float | None = NORM_FACTOR
    """Rows whose norm exceeds this multiple of the median norm are left out (None: keep all)."""


class Want(NamedTuple):
    """What one dictionary reads from the data."""

    hookpoint: str | None
    """Hookpoint of its input; None: the data's only one (a store's, or a tensor's rows)."""
    d_in: int
    """Width of its input."""
    d_out: int
    """Width of its output (its target's, for transcoders)."""
    target: str | None = None
    """Hookpoint it reconstructs instead of its input (transcoders), in keyed data."""
    gradients: bool = False
    """Also read the loss gradients of its input (`<hookpoint>.grad`) where the data has them."""


class Feed(NamedTuple):
    """Where one dictionary's tensors sit in each batch of a `Source`."""

    input: int
    """Index of its input rows in a batch."""
    target: int | None
    """Index of its target rows (transcoders); None, or an index past the end of a batch (an
    iterable may yield x or (x, target)): it reconstructs its input."""
    extras: dict[str, int]
    """Per-row tensors its loss receives as `StepState.extra[name]`: "labels", "grads"."""
    mean_sq_norm: float | None
    """Mean squared norm of its inputs, where known without reading batches."""
    describe: dict
    """Provenance of its data (kind, path, model, hookpoint, rows, ...)."""

    @property
    def where(self) -> str:
        """Where its batches come from, for error messages."""
        d = self.describe
        if d["kind"] == "store":
            return f"hookpoint {d['hookpoint']!r} of store {d['path']}"
        if "hookpoint" in d:
            return f"hookpoint {d['hookpoint']!r} of the {d['kind']} data"
        return f"the {d['kind']} data"

    def split(self, batch: Batch) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """(input rows, target rows or None, {name: per-row tensor}) of a batch."""
        target = batch[self.target] if self.target is not None and self.target < len(batch) \
            else None
        return batch[self.input], target, {k: batch[i] for k, i in self.extras.items()}


class Source(NamedTuple):
    """Row-aligned batches for one or more dictionaries, whatever the data's origin."""

    batches: Callable[[int], Iterator[Batch]]
    """Batches from a global batch index on (deterministic: a resumed run reads what it would
    have read)."""
    per_epoch: int | None
    """Batches in one pass over the data, where known."""
    feeds: list[Feed]
    """One per `Want`, in order."""


def check_batch(x: Tensor, target: Tensor | None, d_in: int, d_out: int, step: int,
                where: str) -> None:
    """Shape and finiteness checks with a message naming the step and the source."""
    if x.ndim != 2 or x.shape[1] != d_in:
        raise DataError(f"batch at step {step} from {where} has shape {tuple(x.shape)}; the "
                        f"dictionary expects [batch, d_in={d_in}]")
    if target is not None and (target.ndim != 2 or target.shape[1] != d_out):
        raise DataError(f"target batch at step {step} from {where} has shape "
                        f"{tuple(target.shape)}; expected [batch, d_out={d_out}]")
    for t in (x,) if target is None else (x, target):
        if not torch.isfinite(t).all():
            raise DataError(f"non-finite activations (NaN or inf) in the batch at step {step} "
                            f"from {where}; clean or re-capture the data")

