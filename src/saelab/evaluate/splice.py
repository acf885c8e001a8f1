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

The conditions share the forward up to the hookpoint: the model runs once to it, and the rest of
the forward runs on the clean activation and each condition's replacement stacked along the
batch (`_shared_pass`); a model whose later modules cannot take the stacked batch, or a hookpoint
at a module's input or delta, gets one whole forward per condition instead. Both give the same
figures (tests/evaluate/test_splice_shared.py); bench/splice_speed.py measures the gain.

`spliced_loss` computes the figures for given model, tokens and hookpoints; the `splice` metric
family runs it inside `saelab.evaluate` (its figures under `report["splice"]`).
"""

from __future__ import annotations

import contextlib
import logging
import time
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

log = logging.getLogger(__name__)

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


def _log_probs(model: nn.Module, tokens: Tensor, copies: int = 1) -> Tensor:
    """Log-probabilities [copies, B, T, V] of every position's next token; with `copies`, the
    model's output holds that many copies of the batch, one after the other (the shared
    forward)."""
    return _normalised(model(input_ids=tokens).logits, tokens, copies)


def _normalised(logits: Tensor, tokens: Tensor, copies: int = 1) -> Tensor:
    """`_log_probs` from the model's logits. The log-softmax runs over the whole contiguous
    output (the last position's prediction is computed and dropped later): on a strided slice
    it is about 2.7x slower."""
    if logits.shape[0] != copies * tokens.shape[0]:
        raise _NotShared(f"the forward gave {logits.shape[0]} rows for {copies} copies of "
                         f"{tokens.shape[0]} contexts")
    logp = F.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
    return logp.view(copies, *tokens.shape, -1)


def _ce_and_kl(logp: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """CE [C, B, T-1] of each copy's prediction of token t+1 from t, and KL(copy 0 || copy c)
    [C, B, T-1] per position (0 for copy 0): sum_v p0 (log p0 - log pc), taken as
    <p0, log p0> - <p0, log pc>, all copies' dot products in one batched product (a third of
    the time of the elementwise form)."""
    c, b, t, v = logp.shape
    after = torch.cat([tokens[:, 1:], tokens[:, :1]], 1)  # [B, T]: the next token (last: any)
    ce = -logp.gather(-1, after[None, :, :, None].expand(c, b, t, 1))[..., 0]
    p = logp[0].exp().view(b * t, v, 1)
    dots = torch.bmm(logp.view(c, b * t, v).transpose(0, 1), p)[..., 0]  # [B*T, C]: <p0, log pc>
    kl = (dots[:, :1] - dots).t().reshape(c, b, t)
    return ce[..., :-1], kl[..., :-1]


class _NotShared(RuntimeError):
    """The rest of the forward did not take the copies of the batch (see `_shared_pass`)."""


def _shared_pass(model: nn.Module, batch: Tensor, source: _Source, target: Hookpoint,
                 replacers: list[Callable[[Tensor], Tensor]], clean: Tensor | None = None
                 ) -> Tensor:
    """Log-probabilities [1 + conditions, B, T, V] of the clean model and of each condition,
    from one forward: the model runs once up to the target, whose output is then stacked with
    each condition's replacement along the batch, so the rest of the forward runs on
    [(1 + conditions) B] contexts and what comes before the hookpoint is computed once (it is
    identical in every condition). With `clean` (the clean log-probabilities, already known)
    only the conditions run after the hookpoint. Raises _NotShared when the rest of the model
    cannot take the stacked batch."""
    copies = len(replacers) + (clean is None)

    def stacked(act: Tensor) -> Tensor:
        return torch.cat([act] * (clean is None) + [r(act) for r in replacers])

    try:
        with source.recording(), patch(model, target, stacked):
            logp = _log_probs(model, batch, copies)
        return logp if clean is None else torch.cat([clean, logp])
    except RuntimeError as e:  # shapes of side inputs (attention masks, ...) that do not stack
        if isinstance(e, _NotShared):
            raise
        raise _NotShared(str(e)) from e


def _separate_passes(model: nn.Module, batch: Tensor, source: _Source, target: Hookpoint,
                     replacers: list[Callable[[Tensor], Tensor]], clean: Tensor | None = None
                     ) -> Tensor:
    """What `_shared_pass` gives, from one whole forward per condition."""
    out = [_log_probs(model, batch) if clean is None else clean]
    for replace in replacers:
        with source.recording(), patch(model, target, replace):
            out.append(_log_probs(model, batch))
    return torch.cat(out)


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
    bare = None
    started = time.perf_counter()
    shared = target.site == "output"  # a module's output can be stacked; other sites cannot
    for start in tqdm(range(0, tokens.shape[0], batch_contexts), desc="spliced loss",
                      disable=not progress):
        batch = tokens[start:start + batch_contexts]
        replacers = [_replacer(exclusion, batch, source, target, fn)
                     for fn in conditions.values()]
        clean = None
        if bare is None:  # the first batch's clean forward, timed alone: the yardstick
            bare = time.perf_counter()
            logits = model(input_ids=batch).logits
            bare = time.perf_counter() - bare
            clean = _normalised(logits, batch)
            del logits
        logp = None
        if shared:
            try:
                logp = _shared_pass(model, batch, source, target, replacers, clean)
            except _NotShared as e:
                log.info("spliced loss: one forward per condition (%s)", e)
                shared = False
        if logp is None:
            logp = _separate_passes(model, batch, source, target, replacers, clean)
        ce, kl = _ce_and_kl(logp, batch)
        del logp
        for i, name in enumerate(["clean", *conditions]):
            sums[name][0] += float(ce[i].sum())
            sums[name][1] += float(kl[i].sum())
        count += ce[0].numel()
    out = _summarise(sums, count)
    out["splice_tokens_per_s"] = tokens.numel() / (time.perf_counter() - started)
    out["bare_forward_tokens_per_s"] = tokens[:batch_contexts].numel() / bare
    return out


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
    - `splice_tokens`: number of predicted tokens;
    - `splice_tokens_per_s`: tokens (of the contexts) per second of the whole splice, every
      condition included, beside `bare_forward_tokens_per_s`, a plain forward's speed on the
      first batch (its clean condition, run alone and timed): their ratio is what the splice
      costs in forwards.

    The mean is that of the replaced activation over the data (a store or tensors); without
    data that tells it, the mean-ablated figures are NaN.
    """

    needs = frozenset({"model", "tokens"})
    figures = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_ablated", "ce_loss_mean_ablated",
               "ce_loss_recovered", "ce_loss_recovered_vs_mean", "kl_spliced", "kl_ablated",
               "kl_mean_ablated", "splice_tokens", "splice_tokens_per_s",
               "bare_forward_tokens_per_s")
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
