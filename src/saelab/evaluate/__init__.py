"""Evaluation: one file per metric family, a registry, and the report writer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.evaluate import afa, reconstruction, sparsity  # noqa: F401  (registers the families)
from saelab.evaluate._registry import families, make
from saelab.evaluate.report import format_report, write_report
from saelab.evaluate.splice import spliced_loss

__all__ = ["evaluate", "families", "format_report", "spliced_loss", "write_report"]


def _batches(data, batch_size: int, hookpoint: str | None, target: str | None
             ) -> Iterable[tuple[Tensor, Tensor]]:
    """(input, what the output is compared with) batches: the input itself for SAEs, the target
    activation for transcoders (a store's `target` hookpoint, or (x, y) tensors)."""
    from saelab.store import ActivationStore, is_store

    if isinstance(data, (str, Path)) and is_store(data):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        xs = (acts for acts, _ in data.iter_rows(hookpoint, batch_size))
        if target is None:
            return ((x, x) for x in xs)
        return zip(xs, (acts for acts, _ in data.iter_rows(target, batch_size)))
    if isinstance(data, Tensor):
        return ((x, x) for x in data.split(batch_size))
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return zip(data[0].split(batch_size), data[1].split(batch_size))
    return ((b, b) if isinstance(b, Tensor) else tuple(b) for b in data)


@torch.no_grad()
def evaluate(dictionary, data, *, hookpoint: str | None = None, batch_size: int = 4096,
             metrics: tuple[str, ...] = ("reconstruction", "sparsity"), model=None,
             tokens: Tensor | None = None, exclusion=None, out: str | Path | None = None,
             target_hookpoint: str | None = None, progress: bool = False) -> dict:
    """Evaluate `dictionary` on activations (tensor, store or iterable of batches).

    With `model` and `tokens` [N, T] (a causal LM), also the spliced CE loss and KL at
    `hookpoint`. Transcoders are compared with their target: `target_hookpoint` of a store, or
    (x, y) tensors; their spliced loss replaces `target_hookpoint` by the transcoder's
    prediction from `hookpoint` (both are then model hookpoints, e.g. 'MODULE:input' and
    'MODULE'). With `out`, writes report.json and plots there. Returns the report dict.
    """
    if "target" in dictionary.needs and target_hookpoint is None and not isinstance(data, tuple):
        from saelab.errors import ConfigError

        raise ConfigError(f"{dictionary.architecture} predicts another activation: pass "
                          f"target_hookpoint (a store) or (x, y) tensors to evaluate it")
    dictionary.eval()
    accs = [make(name, dictionary) for name in metrics]
    for x, y in tqdm(_batches(data, batch_size, hookpoint, target_hookpoint), desc="evaluate",
                     disable=not progress):
        out_ = dictionary(x.float())
        for acc in accs:
            acc.update(y.float(), out_.x_hat, out_.codes)
    report: dict = {"architecture": dictionary.architecture, "n_latents": dictionary.n_latents}
    for acc in accs:
        report.update(acc.result())
    if model is not None and tokens is not None:
        report.update(_splice(dictionary, data, model, tokens, hookpoint, target_hookpoint,
                              exclusion, progress))
    if out is not None:
        sp = next((a for a in accs if a.family == "sparsity"), None)
        write_report(out, report, sp.l0_per_input() if sp else None,
                     sp.frequencies() if sp else None)
    return report


def _splice(dictionary, data, model, tokens: Tensor, hookpoint: str | None,
            target_hookpoint: str | None, exclusion, progress: bool) -> dict:
    """Spliced loss at the dictionary's hookpoint, or for a transcoder at its target with the
    source read from `hookpoint` in the same forward."""
    from saelab.errors import ConfigError

    if hookpoint is None:
        raise ConfigError("the spliced loss needs the hookpoint the dictionary was trained on: "
                          "pass hookpoint (for a transcoder, the hookpoint it reads)")
    if "target" in dictionary.needs and target_hookpoint is None:
        raise ConfigError(f"the spliced loss of a {dictionary.architecture} replaces the "
                          f"activation it predicts: pass target_hookpoint (e.g. "
                          f"hookpoint='MODULE:input', target_hookpoint='MODULE')")
    mean = _data_mean(data, target_hookpoint or hookpoint, target=target_hookpoint is not None)
    return spliced_loss(model, tokens, hookpoint, dictionary, exclusion, mean, progress=progress,
                        target_hookpoint=target_hookpoint)


def _data_mean(data, hookpoint: str, target: bool = False) -> Tensor | None:
    """Mean of the activation at `hookpoint` (the y of (x, y) tensors when `target`)."""
    from saelab.store import ActivationStore, is_store

    if isinstance(data, (str, Path)) and is_store(data):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        return data.mean(hookpoint)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[1 if target else 0].float().mean(0)
    if isinstance(data, Tensor) and not target:
        return data.float().mean(0)
    return None
