"""Activations of token contexts at a dictionary's hookpoint, for the families that run the model
on token ids of their own (`hallucination`, `ood`): the model runs on each batch of contexts
(stopped after the hookpoint), and each position is marked kept or not.

Kept positions are those the dictionary is evaluated on: not the first of a context (in SmolLM2's
middle layers it carries an activation hundreds of times larger than the rest, whatever the token,
as a BOS does), and not what the evaluation's exclusion rule drops (special tokens, rows above the
norm limit the dictionary was trained with). A non-finite activation anywhere is refused, naming
the context and position, before the norm rule could hide it (NaN fails every comparison).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.capture import BATCH_CONTEXTS, Capture, resolve
from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError, DataError


class ContextBatch(NamedTuple):
    """The activations of one batch of contexts."""

    acts: Tensor
    """The hookpoint's activation [B, T, d] (float32, on the model's device)."""
    keep: Tensor
    """Kept positions [B, T] (bool, on the activations' device)."""
    first: int
    """Index of the batch's first context among all the contexts given."""


def one_hookpoint(model: nn.Module, hookpoint: str, family: str) -> str:
    """The key of `hookpoint`, which must name one module of `model` (ConfigError otherwise)."""
    hps = resolve(model, [hookpoint])
    if len(hps) != 1:
        raise ConfigError(f"{family}: hookpoint {hookpoint!r} matches {len(hps)} modules; name "
                          f"the one the dictionary reads")
    return hps[0].key


@torch.no_grad()
def context_activations(model: nn.Module, tokens: Tensor, hookpoint: str,
                        exclusion: Exclusion | None = None,
                        batch_contexts: int = BATCH_CONTEXTS, progress: bool = False,
                        desc: str = "contexts") -> Iterator[ContextBatch]:
    """Run `model` on `tokens` [N, T] in batches of `batch_contexts` contexts and yield the
    activation at `hookpoint` (one module) with its kept positions. A DataError names the first
    context and position whose activation is NaN or inf."""
    key = one_hookpoint(model, hookpoint, desc)
    device = next(model.parameters()).device
    with Capture(model, [hookpoint]) as cap:
        for first in tqdm(range(0, tokens.shape[0], batch_contexts), desc=desc,
                          disable=not progress):
            ids = tokens[first:first + batch_contexts].to(device)
            acts = cap.run(input_ids=ids)[key].float()  # [B, T, d]
            bad = (~torch.isfinite(acts)).any(-1).nonzero()
            if len(bad):
                c, t = (int(v) for v in bad[0])
                raise DataError(f"{desc}: the activation at {hookpoint!r} holds NaN or inf at "
                                f"context {first + c}, position {t}: check the model's weights "
                                f"and the token ids (figures on them would be NaN)")
            keep = torch.ones(ids.shape, dtype=torch.bool, device=acts.device)
            keep[:, 0] = False
            if exclusion is not None:
                keep &= exclusion.keep_mask(ids, {key: acts}).to(acts.device)
            yield ContextBatch(acts, keep, first)
