"""Spliced next-token loss: the model's CE loss and KL with the dictionary's reconstruction in
place of the activation at a hookpoint, against the clean model, zero-ablation and
mean-ablation of that activation.

Positions the exclusion rule drops (special tokens, massive-norm rows) are left untouched in
every condition, so that the comparison is about the positions the dictionary was trained on.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.capture import Capture
from saelab.capture.exclude import Exclusion
from saelab.capture.patch import patch


def _replacer(exclusion: Exclusion, key: str, tokens: Tensor, fn: Callable[[Tensor], Tensor]):
    def replace(act: Tensor) -> Tensor:
        keep = exclusion.keep_mask(tokens, {key: act})  # [B, T]
        new = act.clone()
        new[keep] = fn(act[keep]).to(act.dtype)
        return new
    return replace


def _ce_and_logp(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    logits = model(input_ids=tokens).logits[:, :-1].float()  # predict token t+1 from t
    logp = F.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    return ce, logp


@torch.no_grad()
def spliced_loss(model: nn.Module, tokens: Tensor, hookpoint: str, dictionary,
                 exclusion: Exclusion | None = None, mean: Tensor | None = None,
                 batch_contexts: int = 8, progress: bool = False) -> dict[str, float]:
    """CE loss (nats/token) clean, spliced, zero- and mean-ablated; KL(clean || condition)."""
    exclusion = exclusion or Exclusion(norm_factor=None)
    with Capture(model, [hookpoint]) as cap:
        key = cap.hookpoints[0].key
    conditions = {"spliced": lambda a: dictionary(a.float()).x_hat,
                  "ablated": torch.zeros_like}
    if mean is not None:
        conditions["mean_ablated"] = lambda a: mean.to(a).expand_as(a)
    sums = {name: [0.0, 0.0] for name in ["clean", *conditions]}  # ce sum, kl sum
    count = 0
    for start in tqdm(range(0, tokens.shape[0], batch_contexts), desc="spliced loss",
                      disable=not progress):
        batch = tokens[start:start + batch_contexts]
        ce_clean, logp_clean = _ce_and_logp(model, batch)
        sums["clean"][0] += float(ce_clean.sum())
        for name, fn in conditions.items():
            with patch(model, hookpoint, _replacer(exclusion, key, batch, fn)):
                ce, logp = _ce_and_logp(model, batch)
            sums[name][0] += float(ce.sum())
            kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
            sums[name][1] += float(kl.sum())
        count += ce_clean.numel()
    return _summarise(sums, count)


def _summarise(sums: dict[str, list[float]], count: int) -> dict[str, float]:
    out = {"ce_loss_clean": sums["clean"][0] / count, "splice_tokens": count}
    for name in sums:
        if name != "clean":
            out[f"ce_loss_{name}"] = sums[name][0] / count
            out[f"kl_{name}"] = sums[name][1] / count
    gap = out["ce_loss_ablated"] - out["ce_loss_clean"]
    out["ce_loss_recovered"] = (out["ce_loss_ablated"] - out["ce_loss_spliced"]) / gap \
        if abs(gap) > 1e-12 else float("nan")
    if "ce_loss_mean_ablated" in out:
        gap = out["ce_loss_mean_ablated"] - out["ce_loss_clean"]
        out["ce_loss_recovered_vs_mean"] = \
            (out["ce_loss_mean_ablated"] - out["ce_loss_spliced"]) / gap if abs(gap) > 1e-12 \
            else float("nan")
    return out
