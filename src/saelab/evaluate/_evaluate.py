"""`evaluate`: run the requested metric families and assemble the report."""

from __future__ import annotations

import contextlib
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import ConfigError, DataError
from saelab.evaluate._base import NEEDS, Context, Family
from saelab.evaluate._data import Data, prepare
from saelab.evaluate._registry import family
from saelab.evaluate._report import META, REPORT_SCHEMA, write_report, write_summary

DEFAULT_FAMILIES = ("reconstruction", "sparsity", "splice")
"""The families run when `metrics` is not given, each where what it needs was given."""


@torch.no_grad()
def evaluate(dictionary, data: Any = None, *, metrics: Sequence[str] | None = None,
             hookpoint: str | None = None, target_hookpoint: str | None = None,
             batch_size: int = 4096, model: torch.nn.Module | None = None,
             tokens: Tensor | None = None, exclusion=None, labels: Any = None,
             other=None, seed: int | None = None,
             allow_hookpoint_mismatch: bool = False, allow_incomplete_store: bool = False,
             out: str | Path | None = None, progress: bool = False) -> dict:
    """Evaluate `dictionary` with the metric families `metrics` (see `families()`); returns the
    report, `{family: {figure: value}, ..., "meta": {...}}`, also written to `out/report.json`
    with each family's plots when `out` is given.

    `data` is the activation stream: a tensor [N, d_in], (x, y) tensors for a transcoder, an
    activation store (or its folder), or an iterable of batches. On a store the hookpoint is
    `check_hookpoint(dictionary, store.hookpoints, hookpoint, allow_hookpoint_mismatch)`: the
    dictionary's own unless a mismatch is allowed; a store whose capture has not finished is
    refused unless `allow_incomplete_store`. Transcoders are compared with their target:
    `target_hookpoint` of a store, or the y of (x, y) tensors. `model` (a causal LM) and `tokens`
    [N, T] serve families that run the model (the spliced loss at `hookpoint`, or for a
    transcoder at `target_hookpoint`, with positions `exclusion` drops left untouched);
    `labels` serve the families that need them, and `other`, another dictionary (a module
    or anything `saelab.load` reads), those that compare two (`similarity`).

    Without `metrics`, runs those of DEFAULT_FAMILIES whose needs are met. Every requested
    family's needs are checked before any work: a missing one is a ConfigError naming the
    family and what to pass. `seed` seeds torch's RNG for the evaluation (the caller's RNG state
    is restored after).
    """
    metrics = (metrics,) if isinstance(metrics, str) else metrics
    requested = None if metrics is None else [family(n) for n in dict.fromkeys(metrics)]
    if requested == []:
        raise ConfigError("metrics is empty: name at least one metric family (see "
                          "saelab.evaluate.families()), or leave it out for the default ones")
    data_ = prepare(dictionary, data, hookpoint, target_hookpoint, batch_size,
                    allow_hookpoint_mismatch, allow_incomplete_store)
    context = Context(dictionary, batches=data_.batches, data_mean=data_.mean, model=model,
                      tokens=tokens, hookpoint=data_.hookpoint,
                      target_hookpoint=data_.target_hookpoint, exclusion=exclusion,
                      labels=labels, other=_other(other), store=data_.store,
                      batch_size=batch_size, seed=seed, progress=progress)
    classes = requested if requested is not None else _defaults(context)
    _check(classes, context)
    dictionary.eval()
    rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        instances = [cls(context) for cls in classes]
        results, seconds = _run(instances, context)
    report = {f.name: results[f.name] for f in instances}
    report[META] = _meta(context, data_, [f.name for f in instances], seconds)
    if out is not None:
        write_report(out, report)  # the figures first: a failing plot leaves them on disk
        plots = {f.name: f.plot(Path(out)) for f in instances}
        write_summary(Path(out) / "summary.html", report, plots)
    return report


def _other(other):
    """The second dictionary in eval mode: a module as given, or loaded with `saelab.io.load`
    from a path (a folder in any known format, an hf:// address, a release name)."""
    if other is None:
        return None
    if isinstance(other, (str, Path)):
        from saelab.io import load

        other = load(other)
    return other.eval()


def _defaults(context: Context) -> list[type[Family]]:
    classes = [family(name) for name in DEFAULT_FAMILIES]
    chosen = [cls for cls in classes if all(context.provides(n) for n in cls.needs)]
    if not chosen:
        raise ConfigError("nothing to evaluate: pass data (activations), or a model and tokens "
                          "for the spliced loss")
    return chosen


def _check(classes: list[type[Family]], context: Context) -> None:
    """Refuse before any work when a family's needs are not met."""
    for cls in classes:
        missing = sorted(n for n in cls.needs if not context.provides(n))
        if missing:
            raise ConfigError(f"metric family {cls.name!r} needs {', '.join(missing)}; pass "
                              + "; ".join(NEEDS[n] for n in missing))
        cls.check(context)


def _run(instances: list[Family], context: Context) -> tuple[dict[str, dict], dict[str, float]]:
    """Streaming families share one pass over the activations; the others run their own."""
    streaming = [f for f in instances if f.streams()]
    seconds = dict.fromkeys((f.name for f in instances), 0.0)
    results: dict[str, dict] = {}
    if streaming:
        seconds["activations_pass"] = 0.0
        row = 0
        for x, target in tqdm(context.batches(), desc="evaluate", disable=not context.progress):
            check_rows(x, target, context.dictionary, row)
            row += x.shape[0]
            t0 = time.perf_counter()
            output = context.dictionary(x)
            seconds["activations_pass"] += time.perf_counter() - t0
            for f in streaming:
                t0 = time.perf_counter()
                f.update(x, target, output)
                seconds[f.name] += time.perf_counter() - t0
    for f in instances:
        t0 = time.perf_counter()
        results[f.name] = f.result() if f.streams() else f.run()
        seconds[f.name] += time.perf_counter() - t0
    return results, {k: round(v, 3) for k, v in seconds.items()}


def check_rows(x: Tensor, target: Tensor, dictionary, first_row: int) -> None:
    """Refuse a batch of the wrong width or with non-finite values, naming the first bad row
    (`first_row` is the index of the batch's first row in the data)."""
    for what, t, width in (("activations", x, dictionary.d_in),
                           ("targets", target, dictionary.d_out)):
        if t.ndim != 2 or t.shape[1] != width:
            raise DataError(f"the {what} have shape {tuple(t.shape)} from row {first_row}; this "
                            f"{dictionary.architecture} expects [rows, {width}]: evaluate it on "
                            f"data of the hookpoint it was trained on")
        bad = (~torch.isfinite(t)).any(dim=1).nonzero()
        if len(bad):
            raise DataError(f"the {what} hold NaN or inf at row {first_row + int(bad[0])}: "
                            f"clean or re-capture the data (figures on them would be NaN)")


def _version() -> str:
    try:
        return metadata.version("saelab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _describe(other) -> dict | None:
    """What the second dictionary is (None without one)."""
    if other is None:
        return None
    return {"architecture": getattr(other, "architecture", type(other).__name__),
            "n_latents": getattr(other, "n_latents", None),
            "provenance": dict(getattr(other, "provenance", {}))}


def _meta(context: Context, data: Data, names: list[str], seconds: dict) -> dict:
    """What was evaluated, on what, with which versions, and how long each family took."""
    d, model, tokens = context.dictionary, context.model, context.tokens
    model_name = getattr(getattr(model, "config", None), "name_or_path", None) \
        if model is not None else None
    return {"schema": REPORT_SCHEMA, "architecture": d.architecture, "n_latents": d.n_latents,
            "d_in": getattr(d, "d_in", None), "d_out": getattr(d, "d_out", None),
            "hookpoint": data.hookpoint, "target_hookpoint": data.target_hookpoint,
            "provenance": dict(getattr(d, "provenance", {})), "data": data.describe,
            "model": (model_name or type(model).__name__) if model is not None else None,
            "tokens": list(tokens.shape) if tokens is not None else None,
            "other": _describe(context.other),
            "families": names, "batch_size": context.batch_size, "seed": context.seed,
            "versions": {"saelab": _version(), "torch": torch.__version__},
            "seconds": seconds}
