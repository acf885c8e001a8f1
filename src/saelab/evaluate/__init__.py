"""Evaluation: one file per metric family, a registry, and the report writer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.evaluate import reconstruction, sparsity  # noqa: F401  (registers the families)
from saelab.evaluate._registry import families, make
from saelab.evaluate.report import format_report, write_report
from saelab.evaluate.splice import spliced_loss

__all__ = ["evaluate", "families", "format_report", "spliced_loss", "write_report"]


def _batches(data, batch_size: int, hookpoint: str | None) -> Iterable[Tensor]:
    from saelab.store import ActivationStore, is_store

    if isinstance(data, (str, Path)) and is_store(data):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        return (acts for acts, _ in data.iter_rows(hookpoint, batch_size))
    if isinstance(data, Tensor):
        return data.split(batch_size)
    return data


@torch.no_grad()
def evaluate(dictionary, data, *, hookpoint: str | None = None, batch_size: int = 4096,
             metrics: tuple[str, ...] = ("reconstruction", "sparsity"), model=None,
             tokens: Tensor | None = None, exclusion=None, out: str | Path | None = None,
             progress: bool = False) -> dict:
    """Evaluate `dictionary` on activations (tensor, store or iterable of batches).

    With `model` and `tokens` [N, T] (a causal LM), also the spliced CE loss and KL at
    `hookpoint`. With `out`, writes report.json and plots there. Returns the report dict.
    """
    dictionary.eval()
    accs = [make(name, dictionary.n_latents) for name in metrics]
    for x in tqdm(_batches(data, batch_size, hookpoint), desc="evaluate", disable=not progress):
        x = x.float()
        out_ = dictionary(x)
        for acc in accs:
            acc.update(x, out_.x_hat, out_.codes)
    report: dict = {"architecture": dictionary.architecture, "n_latents": dictionary.n_latents}
    for acc in accs:
        report.update(acc.result())
    if model is not None and tokens is not None:
        if hookpoint is None:
            raise ValueError("spliced loss needs the hookpoint the dictionary was trained on")
        mean = _data_mean(data, hookpoint)
        report.update(spliced_loss(model, tokens, hookpoint, dictionary, exclusion, mean,
                                   progress=progress))
    if out is not None:
        sp = next((a for a in accs if a.family == "sparsity"), None)
        write_report(out, report, sp.l0_per_input() if sp else None,
                     sp.frequencies() if sp else None)
    return report


def _data_mean(data, hookpoint: str) -> Tensor | None:
    from saelab.store import ActivationStore, is_store

    if isinstance(data, (str, Path)) and is_store(data):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        return data.mean(hookpoint)
    if isinstance(data, Tensor):
        return data.float().mean(0)
    return None
