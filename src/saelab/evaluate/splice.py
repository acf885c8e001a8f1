"""Spliced next-token loss: the model's CE loss and KL with the dictionary's output in place of
the activation at a hookpoint, against the clean model, zero-ablation and mean-ablation of that
activation.

An SAE reads and replaces the same activation. A transcoder reads one hookpoint (the source: a
module's input, or an earlier hookpoint) and predicts another (the target: that module's output):
during one forward the source is recorded by a hook as the model computes it, and the target is
replaced by transcoder(source). The ablations replace the target. The source must be computed
before the target is needed; when it is not (it comes later in the forward, or depends on the
target), splicing is impossible and is an error.

Positions the exclusion rule drops (special tokens, massive-norm rows of the source or the target)
are left untouched in every condition, so that the comparison is about the positions the
dictionary was trained on.

`spliced_loss` computes the figures for given model, tokens and hookpoints; the `splice` metric
family runs it inside `saelab.evaluate` (its figures under `report["splice"]`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.capture import BATCH_CONTEXTS, Hookpoint, first_tensor, module_input, resolve
from saelab.capture.exclude import Exclusion
from saelab.capture.patch import patch
from saelab.errors import ConfigError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register

Condition = Callable[[Tensor, Tensor], Tensor]
"""(target rows [N, d_out], source rows [N, d_in]) -> replacement of the target rows [N, d_out]."""


def _one(model: nn.Module, spec: str | Hookpoint) -> Hookpoint:
    hps = resolve(model, [spec])
    if len(hps) != 1:
        raise ConfigError(f"splicing needs one module, but hookpoint {Hookpoint.parse(spec).key!r} "
                          f"matches {len(hps)}; name a single module")
    return hps[0]


class _Source:
    """Records the source activation of each forward as the model computes it (the input site
    from a pre-hook, so that it is there before anything inside the module runs)."""

    def __init__(self, model: nn.Module, hp: Hookpoint):
        self.hp = hp
        self.module = dict(model.named_modules())[hp.module]
        self.act: Tensor | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator["_Source"]:
        self.act = None
        if self.hp.site == "input":
            def pre_hook(mod, args, kwargs):
                self.act = module_input(args, kwargs)
            handle = self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            def hook(mod, args, kwargs, output):
                out = first_tensor(output)
                self.act = out if self.hp.site == "output" else out - module_input(args, kwargs)
            handle = self.module.register_forward_hook(hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self.act = None


def _order_error(source: Hookpoint, target: Hookpoint) -> ConfigError:
    return ConfigError(
        f"cannot splice at {target.key!r}: the dictionary reads {source.key!r}, which the model "
        f"has not computed yet when {target.key!r} must be replaced (it comes later in the "
        f"forward, or depends on the target). A transcoder can only be spliced when its source "
        f"comes before its target, e.g. hookpoint='MODULE:input', target_hookpoint='MODULE'; "
        f"check that the two hookpoints are not swapped")


def _replacer(exclusion: Exclusion, tokens: Tensor, source: _Source, target: Hookpoint,
              fn: Condition) -> Callable[[Tensor], Tensor]:
    """The patch function for `target`: kept positions become fn(target, source)."""
    def replace(act: Tensor) -> Tensor:
        src = source.act
        if src is None:
            raise _order_error(source.hp, target)
        if src.shape[:-1] != act.shape[:-1]:
            raise ConfigError(f"source {source.hp.key!r} has positions {tuple(src.shape[:-1])} "
                              f"but target {target.key!r} has {tuple(act.shape[:-1])}; splicing "
                              f"needs one activation per token at both")
        keep = exclusion.keep_mask(tokens, {source.hp.key: src, target.key: act})  # [B, T]
        new = act.clone()
        new[keep] = fn(act[keep], src[keep]).to(act.dtype)
        return new
    return replace


def _ce_and_logp(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    logits = model(input_ids=tokens).logits[:, :-1].float()  # predict token t+1 from t
    logp = F.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    return ce, logp


def _predict(dictionary) -> Condition:
    """The spliced condition: the dictionary's output for the source rows."""
    def spliced(act: Tensor, src: Tensor) -> Tensor:
        x_hat = dictionary(src.float()).x_hat
        if x_hat.shape[-1] != act.shape[-1]:
            raise ConfigError(f"the dictionary predicts {x_hat.shape[-1]} dimensions, but the "
                              f"activation it replaces has {act.shape[-1]}; pass the hookpoint "
                              f"(and, for a transcoder, the target_hookpoint) it was trained on")
        return x_hat
    return spliced


@torch.no_grad()
def spliced_loss(model: nn.Module, tokens: Tensor, hookpoint: str, dictionary,
                 exclusion: Exclusion | None = None, mean: Tensor | None = None,
                 batch_contexts: int = BATCH_CONTEXTS, progress: bool = False,
                 target_hookpoint: str | None = None) -> dict[str, float]:
    """CE loss (nats/token) clean, spliced, zero- and mean-ablated; KL(clean || condition).

    `hookpoint` is what the dictionary reads; `target_hookpoint` (transcoders) what it predicts,
    which is the activation replaced and ablated (default: `hookpoint`). `mean` is the mean of
    the replaced activation; without it the mean-ablated figures are NaN. Returns the figures of
    the `splice` family (SpliceLoss.figures).
    """
    exclusion = exclusion or Exclusion(norm_factor=None)
    source = _Source(model, _one(model, hookpoint))
    target = _one(model, target_hookpoint or hookpoint)
    conditions: dict[str, Condition] = {"spliced": _predict(dictionary),
                                        "ablated": lambda a, s: torch.zeros_like(a)}
    if mean is not None:
        conditions["mean_ablated"] = lambda a, s: mean.to(a).expand_as(a)
    sums = {name: [0.0, 0.0] for name in ["clean", *conditions]}  # ce sum, kl sum
    count = 0
    for start in tqdm(range(0, tokens.shape[0], batch_contexts), desc="spliced loss",
                      disable=not progress):
        batch = tokens[start:start + batch_contexts]
        ce_clean, logp_clean = _ce_and_logp(model, batch)
        sums["clean"][0] += float(ce_clean.sum())
        for name, fn in conditions.items():
            with source.recording(), patch(model, target,
                                           _replacer(exclusion, batch, source, target, fn)):
                ce, logp = _ce_and_logp(model, batch)
            sums[name][0] += float(ce.sum())
            kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
            sums[name][1] += float(kl.sum())
        count += ce_clean.numel()
    return _summarise(sums, count)


def _summarise(sums: dict[str, list[float]], count: int) -> dict[str, float]:
    out = {"ce_loss_clean": sums["clean"][0] / count, "splice_tokens": count}
    for name in ("spliced", "ablated", "mean_ablated"):
        ce, kl = sums.get(name, (float("nan"), float("nan")))
        out[f"ce_loss_{name}"], out[f"kl_{name}"] = ce / count, kl / count
    out["ce_loss_recovered"] = _recovered(out["ce_loss_ablated"], out)
    out["ce_loss_recovered_vs_mean"] = _recovered(out["ce_loss_mean_ablated"], out)
    return out


def _recovered(baseline: float, out: dict[str, float]) -> float:
    """(baseline - spliced) / (baseline - clean): 1 when splicing costs nothing, 0 when it is as
    bad as the baseline; NaN when the baseline is unknown or costs nothing itself."""
    gap = baseline - out["ce_loss_clean"]
    return (baseline - out["ce_loss_spliced"]) / gap if abs(gap) > 1e-12 else float("nan")


@register("splice")
class SpliceLoss(Family):
    """The model's next-token loss with the dictionary's output spliced in at its hookpoint (a
    transcoder's at its target), against the clean model and the zero- and mean-ablation of that
    activation; positions the exclusion rule drops are left untouched in every condition.

    - `ce_loss_clean`, `ce_loss_spliced`, `ce_loss_ablated`, `ce_loss_mean_ablated`: CE loss
      (nats/token) of the clean model and of each condition;
    - `kl_spliced`, `kl_ablated`, `kl_mean_ablated`: KL(clean || condition) per token;
    - `ce_loss_recovered`, `ce_loss_recovered_vs_mean`: the fraction of the loss gap the
      dictionary recovers, against zero- and mean-ablation;
    - `splice_tokens`: number of predicted tokens.

    The mean is that of the replaced activation over the data (a store or tensors); without
    data that tells it, the mean-ablated figures are NaN.
    """

    needs = frozenset({"model", "tokens"})
    figures = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_ablated", "ce_loss_mean_ablated",
               "ce_loss_recovered", "ce_loss_recovered_vs_mean", "kl_spliced", "kl_ablated",
               "kl_mean_ablated", "splice_tokens")
    headline = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_ablated", "ce_loss_mean_ablated",
                "ce_loss_recovered", "ce_loss_recovered_vs_mean", "kl_spliced")

    @classmethod
    def check(cls, context: Context) -> None:
        dictionary = context.dictionary
        if context.hookpoint is None:
            raise ConfigError("splice: the spliced loss needs the hookpoint the dictionary was "
                              "trained on: pass hookpoint (for a transcoder, the hookpoint it "
                              "reads)")
        if "target" in dictionary.needs and context.target_hookpoint is None:
            raise ConfigError(f"splice: the spliced loss of a {dictionary.architecture} replaces "
                              f"the activation it predicts: pass target_hookpoint (e.g. "
                              f"hookpoint='MODULE:input', target_hookpoint='MODULE')")

    def run(self) -> dict[str, float]:
        c = self.context
        return spliced_loss(c.model, c.tokens, c.hookpoint, c.dictionary, c.exclusion,
                            c.data_mean, progress=c.progress, target_hookpoint=c.target_hookpoint)
