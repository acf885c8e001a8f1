"""One optimiser step of a gradient-trained dictionary (shared by the loop and the benchmarks)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saelab.dictionaries import Dictionary, Loss, StepState
from saelab.train.group import Group


def train_step(dictionary: Dictionary, optimizer: torch.optim.Optimizer, x: Tensor,
               state: StepState, target: Tensor | None = None,
               autocast: torch.dtype | None = None, group: Group | None = None,
               loss_fn: Callable[..., Loss] | None = None, grad_clip: float = 0.0) -> Loss:
    """Loss, backward, decoder-gradient projection, gradient clipping, Adam step, decoder
    renormalisation.

    `autocast` (e.g. torch.bfloat16) runs the loss under torch.autocast with that dtype; weights,
    gradients and the optimiser stay float32. With a data-parallel `group`, the gradients are
    averaged over its ranks right after backward, and buffers follow its rank 0 after the step.
    `loss_fn` replaces `dictionary.loss` (its torch.compile'd form). `grad_clip` > 0 scales the
    gradients down to that global norm where they exceed it (after the decoder projection)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        loss = (loss_fn or dictionary.loss)(x, state, target)
    loss.total.backward()
    if group is not None and group.active:
        group.average_gradients(dictionary.parameters())
    if dictionary.unit_norm_decoder:
        dictionary.remove_parallel_decoder_grad()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(dictionary.parameters(), grad_clip)
    optimizer.step()
    if dictionary.unit_norm_decoder:
        dictionary.normalize_decoder()
    if group is not None and group.active:
        group.broadcast_buffers(dictionary)
    return loss
