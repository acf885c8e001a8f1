"""Activations together with the gradient of the next-token loss with respect to them.

Gradient-guided dictionaries (g-SAE, `gsae_gradient`) train on pairs (x, d(loss)/d(x)) per token.
`GradientCapture` runs a causal LM on a batch of token contexts with the activation at one
hookpoint made a leaf of the autograd graph, computes the next-token cross-entropy, and takes one
backward pass: the model's weights get no gradients (their requires_grad is switched off for the
call), and nothing before the hookpoint is recorded for autograd.

The loss is the SUM over positions of each context of the next-token cross-entropy (token t+1
predicted at t), so a row's gradient does not depend on how many contexts share its batch. An
activation at position t reaches the loss at positions t, t+1, ... (causal attention), and its
gradient sums those effects; the last position predicts nothing of its own, and its gradient is
only what it passes on (zero for the last position of a context).

`activation_gradients` returns tensors; `capture_to_store(..., gradients=True)` (saelab.store)
writes a store holding the activations under `<key>` and the gradients under `<key>.grad`
(`gradient_key`), row-aligned, which `saelab.fit` reads for dictionaries that need gradients.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.capture import BATCH_CONTEXTS, Hookpoint, first_tensor, module_input, resolve
from saelab.errors import ConfigError

GRAD_SUFFIX = ".grad"
"""Suffix of the store hookpoint that holds the gradients of hookpoint `<key>`."""


def gradient_key(key: str) -> str:
    """Store hookpoint of the loss gradients of hookpoint `key`: `<key>.grad`."""
    return f"{key}{GRAD_SUFFIX}"


def is_gradient_key(key: str) -> bool:
    return key.endswith(GRAD_SUFFIX)


class ActGrads(NamedTuple):
    """Activations at a hookpoint and the gradient of the loss with respect to them."""

    acts: Tensor
    """Activations [N, T, d] (float32)."""
    grads: Tensor
    """d(loss)/d(acts) [N, T, d] (float32); loss = summed next-token CE of each context."""
    loss: Tensor
    """Next-token cross-entropy per position [N, T - 1] (nats)."""


class GradientCapture:
    """Records the activation at one hookpoint and d(loss)/d(activation) for token batches.

    >>> with GradientCapture(model, "model.layers.15") as cap:
    ...     out = cap.run(input_ids=ids)     # {"model.layers.15": acts, "model.layers.15.grad": g}

    Sites: `output` and `input` are read and differentiated where the model computes them;
    `delta` (output - input) gets the gradient of the output (a step in the delta is a step in
    the output, the input held fixed). `run` has the signature of `Capture.run`, so the store
    writer uses either.
    """

    def __init__(self, model: nn.Module, hookpoint: str | Hookpoint):
        hps = resolve(model, [hookpoint])
        if len(hps) != 1:
            raise ConfigError(f"gradient capture reads one hookpoint, but "
                              f"{Hookpoint.parse(hookpoint).key!r} matches {len(hps)}; name a "
                              f"single module")
        self.model = model
        self.hookpoints = hps
        self.hp = hps[0]
        self.module = dict(model.named_modules())[self.hp.module]
        self.last_loss: Tensor | None = None
        self._leaf: Tensor | None = None
        self._act: Tensor | None = None

    @property
    def keys(self) -> list[str]:
        """What `run` returns: the activation's key and its gradient's."""
        return [self.hp.key, gradient_key(self.hp.key)]

    def __enter__(self) -> "GradientCapture":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @contextlib.contextmanager
    def _hooked(self) -> Iterator[None]:
        if self.hp.site == "input":
            def pre_hook(module, args, kwargs):
                leaf = module_input(args, kwargs).detach().requires_grad_(True)
                self._leaf, self._act = leaf, leaf
                if args:
                    return (leaf, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": leaf}
            handle = self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            def hook(module, args, kwargs, output):
                out = first_tensor(output)
                leaf = out.detach().requires_grad_(True)
                self._leaf = leaf
                self._act = leaf if self.hp.site == "output" else out - module_input(args, kwargs)
                return _replace_first(output, leaf)
            handle = self.module.register_forward_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def run(self, input_ids: Tensor, **kwargs) -> dict[str, Tensor]:
        """One forward and one backward of `input_ids` [B, T]; the activation [B, T, d] and its
        gradient [B, T, d] under `keys`. The per-position loss is kept in `last_loss`."""
        if input_ids.shape[1] < 2:
            raise ConfigError("gradient capture needs contexts of at least 2 tokens (the loss "
                              "predicts token t+1 from position t)")
        frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad(), self._hooked():
                logits = self.model(input_ids=input_ids, **kwargs).logits[:, :-1].float()
                if self._leaf is None:
                    raise ConfigError(f"hookpoint {self.hp.key!r} never ran during the forward")
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     input_ids[:, 1:].reshape(-1), reduction="none")
                (grad,) = torch.autograd.grad(ce.sum(), self._leaf)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        act = self._act.detach().float()
        self._leaf = self._act = None
        self.last_loss = ce.detach().reshape(input_ids.shape[0], -1)
        return {self.keys[0]: act, self.keys[1]: grad.float()}


def _replace_first(output, leaf: Tensor):
    """`output` with its activation tensor (itself, or the first element of a tuple) replaced."""
    if isinstance(output, Tensor):
        return leaf
    if isinstance(output, (tuple, list)):
        return type(output)((leaf, *output[1:]))
    raise ConfigError(f"cannot differentiate through a module that returns a "
                      f"{type(output).__name__}; choose a hookpoint whose module returns a tensor "
                      f"or a tuple")


def activation_gradients(model: nn.Module, tokens: Tensor, hookpoint: str,
                         batch_contexts: int = BATCH_CONTEXTS) -> ActGrads:
    """Activations at `hookpoint` and d(loss)/d(activation) for every context of `tokens`
    [N, T], with one forward and one backward per batch of `batch_contexts` contexts."""
    cap = GradientCapture(model, hookpoint)
    acts, grads, losses = [], [], []
    for start in range(0, tokens.shape[0], batch_contexts):
        out = cap.run(input_ids=tokens[start:start + batch_contexts])
        acts.append(out[cap.keys[0]])
        grads.append(out[cap.keys[1]])
        losses.append(cap.last_loss)
    return ActGrads(torch.cat(acts), torch.cat(grads), torch.cat(losses))
