"""The data behind the feature browser, precomputed once into the dashboard folder.

`saelab dashboard` (through `write_dashboard`) writes `data/features.json` (one record per
feature shown: density, maximum activation, top tokens, promoted tokens) and
`data/features/NNNNN.json` (one per feature: its contexts grouped by activation quantile with
the feature's activation on *every* token of each context, the logit lens, the nearest features
by decoder cosine, the co-occurring features) and `data/features/NNNNN.svg` (its activation
histogram, drawn by matplotlib). The static pages and `saelab view`'s server are both rendered
from these files.

Besides the top-examples pass (saelab.interpret.top_examples) this takes two more streaming passes
over the store, each with memory bounded by one batch plus a state that does not grow with the
store:

- `collect_feature_stats`: for the F features shown, `n_samples` random examples in each of
  `n_quantiles` activation intervals (reservoir sampling with random keys, as delphi samples
  its "quantile" examples; Paulo et al. 2024, "Automatically Interpreting Millions of Features
  in Large Language Models"), and the co-occurrence counts [F, n_latents] (rows where both fire).
- `window_activations`: the F features' codes on every token of the windows shown, encoding only
  the rows those windows hold.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saelab.errors import DataError
from saelab.interpret.top_examples import TopExamples

Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]
"""A callable giving a fresh pass of (acts [B, d_in], row_ids [B]) over the store, in row order."""

N_QUANTILES = 4
"""Activation intervals whose random examples the feature page shows, besides the top ones."""
N_SAMPLES = 5
"""Random examples kept per interval."""
N_NEIGHBOURS = 10
"""Nearest and co-occurring features listed per feature."""


class FeatureStats(NamedTuple):
    """What the second streaming pass gathers for the features shown."""

    features: list[int]
    """The F features, in the order of the first axis of every tensor here."""
    quantile_edges: Tensor
    """Float64 [F, n_quantiles - 1]: inner edges of each feature's activation intervals."""
    sample_rows: Tensor
    """Int64 [F, n_quantiles, n_samples]: row ids of the random examples; -1 in empty slots."""
    sample_values: Tensor
    """Float32 [F, n_quantiles, n_samples]: the feature's activation on those rows."""
    cooccurrence: Tensor
    """Int64 [F, n_latents]: rows on which both the feature and each latent fire."""


def quantile_edges(top: TopExamples, features: list[int], n_quantiles: int) -> Tensor:
    """Inner edges [F, n_quantiles - 1] splitting each feature's firing rows into equal shares,
    read off its histogram: inside the bin where the cumulative share is reached, the edge is
    interpolated as if the values were spread evenly over log(value)."""
    counts = top.hist_counts[features].double()  # [F, n_bins]
    cum = counts.cumsum(1) / counts.sum(1, keepdim=True).clamp_min(1)
    shares = (torch.arange(1, n_quantiles, dtype=torch.float64) / n_quantiles).expand(
        len(features), -1).contiguous()
    idx = torch.searchsorted(cum.contiguous(), shares).clamp(max=counts.shape[1] - 1)
    before = torch.where(idx > 0, cum.gather(1, (idx - 1).clamp(min=0)), torch.zeros_like(shares))
    in_bin = cum.gather(1, idx) - before
    frac = ((shares - before) / in_bin.clamp_min(1e-12)).clamp(0, 1)
    log_edges = top.hist_edges.log()
    lo, hi = log_edges[idx], log_edges[idx + 1]
    return (lo + frac * (hi - lo)).exp()


def _merge_samples(keys: Tensor, rows: Tensor, vals: Tensor, group: Tensor, new_keys: Tensor,
                   new_rows: Tensor, new_vals: Tensor, n_samples: int) -> None:
    """Keep, in place, the `n_samples` smallest keys of each group among the state [G, S] and
    the new candidates (flat, with their group ids)."""
    n_groups = keys.shape[0]
    all_keys = torch.cat([keys.flatten(), new_keys])
    all_rows = torch.cat([rows.flatten(), new_rows])
    all_vals = torch.cat([vals.flatten(), new_vals])
    all_group = torch.cat([torch.arange(n_groups).repeat_interleave(n_samples), group])
    order = all_keys.argsort(stable=True)
    order = order[all_group[order].argsort(stable=True)]  # by group, then by key
    g = all_group[order]
    first = torch.searchsorted(g, torch.arange(n_groups))  # where each group starts
    rank = torch.arange(g.numel()) - first[g]
    keep = order[rank < n_samples]
    slot = g[rank < n_samples] * n_samples + rank[rank < n_samples]
    keys.view(-1)[slot] = all_keys[keep]
    rows.view(-1)[slot] = all_rows[keep]
    vals.view(-1)[slot] = all_vals[keep]


@torch.no_grad()
def collect_feature_stats(dictionary, batches: Iterable[tuple[Tensor, Tensor]],
                          top: TopExamples, features: list[int],
                          n_quantiles: int = N_QUANTILES, n_samples: int = N_SAMPLES,
                          seed: int = 0) -> FeatureStats:
    """Random examples per activation interval and co-occurrence counts of `features`, in one
    pass over `batches`. Memory: O(F * n_latents) counts plus one batch's codes."""
    device = next(iter(dictionary.parameters())).device
    dtype = next(iter(dictionary.parameters())).dtype
    F, Q, S = len(features), n_quantiles, n_samples
    edges = quantile_edges(top, features, Q)
    keys = torch.full((F * Q, S), math.inf)
    rows = torch.full((F * Q, S), -1, dtype=torch.int64)
    vals = torch.zeros(F * Q, S)
    co = torch.zeros(F, dictionary.n_latents, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.tensor(features, dtype=torch.int64)
    for acts, row_ids in batches:
        codes_BL = dictionary.encode(acts.to(device=device, dtype=dtype)).float().cpu()
        fires_BL = (codes_BL > 0).float()
        co += (fires_BL[:, chosen].t() @ fires_BL).round().long()  # [F, L] rows both fire
        vals_BF = codes_BL[:, chosen]
        b, j = (vals_BF > 0).nonzero(as_tuple=True)
        v = vals_BF[b, j]
        q = (v.double()[:, None] >= edges[j]).sum(1)  # the interval of each firing value
        _merge_samples(keys, rows, vals, j * Q + q, torch.rand(v.numel(), generator=gen),
                       row_ids.long()[b], v, S)
    return FeatureStats(features, edges, rows.view(F, Q, S), vals.view(F, Q, S), co)


@torch.no_grad()
def window_activations(dictionary, batches: Iterable[tuple[Tensor, Tensor]], rows: Tensor,
                       features: Tensor) -> Tensor:
    """Codes of latent `features[i]` on row `rows[i]` (both [P]), for every pair, in one pass
    over `batches` that encodes only the rows asked for; 0 for a row id < 0."""
    device = next(iter(dictionary.parameters())).device
    dtype = next(iter(dictionary.parameters())).dtype
    out = torch.zeros(rows.numel())
    order = rows.argsort()
    sorted_rows = rows[order]
    for acts, row_ids in batches:
        lo, hi = int(row_ids[0]), int(row_ids[-1]) + 1  # batches are in row order
        a, b = torch.searchsorted(sorted_rows, torch.tensor([lo, hi])).tolist()
        if a == b:
            continue
        idx = order[a:b]
        wanted, inverse = rows[idx].unique(return_inverse=True)
        codes = dictionary.encode(acts[wanted - lo].to(device=device, dtype=dtype)).float().cpu()
        out[idx] = codes[inverse, features[idx]]
    return out


# --- records ------------------------------------------------------------------------------------
class Window(NamedTuple):
    """One context to show: the window of tokens around an example row."""

    feature: int
    value: float
    row: int
    ctx: int
    pos: int
    start: int
    stop: int


def windows_of(feature: int, values: list[float], rows: list[int], row_ctx: Tensor,
               row_pos: Tensor, n_tokens: int, window: tuple[int, int]) -> list[Window]:
    """The token windows around each example row (row ids < 0 are skipped)."""
    before, after = window
    out = []
    for value, row in zip(values, rows):
        if row < 0:
            continue
        if row >= row_ctx.numel():
            raise DataError(f"row id {row} is outside row_ctx (it has {row_ctx.numel()} rows); "
                            "the examples do not match this token metadata")
        ctx, pos = int(row_ctx[row]), int(row_pos[row])
        out.append(Window(feature, float(value), row, ctx, pos, max(0, pos - before),
                          min(n_tokens, pos + after + 1)))
    return out


def position_rows(row_ctx: Tensor, row_pos: Tensor, shape: tuple[int, int]) -> Tensor:
    """[N_ctx, T] int64: the row id of each (context, position); -1 where no row was kept."""
    table = torch.full(shape, -1, dtype=torch.int64)
    table[row_ctx.long(), row_pos.long()] = torch.arange(row_ctx.numel())
    return table


def histogram_svg(counts: list[int], edges: list[float], xlabel: str, color: str,
                  log_x: bool = True) -> str:
    """A bar chart of `counts` over bin `edges` as inline SVG, drawn by matplotlib (the one
    plotting path of the dashboards). With `log_x` the bars are drawn over log10 of the edges on
    a linear axis whose ticks read as the values (matplotlib's log scale is several times
    slower to draw). The XML prologue and the xlink declaration are dropped so that it can sit
    inside an HTML page; text stays text (svg.fonttype none)."""
    import io

    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import FuncFormatter

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "saelab"}):
        fig = Figure(figsize=(4.6, 1.7), dpi=100)
        ax = fig.subplots()
        ax.stairs(counts, [math.log10(e) for e in edges] if log_x else edges, fill=True,
                  color=color)
        if log_x:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{10 ** v:.3g}"))
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.3)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None,
                                                 "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r'\s*xmlns:xlink="[^"]*"', "", svg, count=1)


def activation_svg(top: TopExamples, feature: int) -> str:
    """The activation histogram of `feature` (its occupied bins, at least 8), as SVG."""
    counts = top.hist_counts[feature]
    nz = counts.nonzero().flatten()
    if nz.numel() == 0:
        return ""
    hi = int(nz[-1]) + 1
    lo = max(0, min(int(nz[0]), hi - 8))
    return histogram_svg(counts[lo:hi].tolist(), top.hist_edges[lo:hi + 1].tolist(),
                         "activation (log-spaced bins)", "#e3823b")


def density_svg(top: TopExamples, bins_per_decade: int = 4) -> str:
    """The log10 firing frequency of the live latents, as SVG ('' when none is live)."""
    live = top.fire_counts[top.fire_counts > 0].double()
    if live.numel() == 0 or top.n_rows == 0:
        return ""
    logf = (live / top.n_rows).log10()
    low = float(torch.floor(logf.min()))
    n = max(1, round(-low * bins_per_decade))
    edges = torch.linspace(low, 0.0, n + 1, dtype=torch.float64)
    counts = torch.bincount(torch.bucketize(logf, edges[1:-1], right=True), minlength=n)
    return histogram_svg(counts.tolist(), edges.tolist(), "log10 firing frequency", "#6e7781",
                         log_x=False)


def nearest_by_decoder(W_dec: Tensor, features: list[int], k: int = N_NEIGHBOURS
                       ) -> dict[int, list[tuple[int, float]]]:
    """The `k` latents whose decoder directions have the largest cosine with each feature's."""
    with torch.no_grad():
        W = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=1)
        cos = W[features] @ W.t()  # [F, L]
        cos[torch.arange(len(features)), torch.tensor(features)] = -math.inf  # not itself
        v, i = cos.topk(min(k, W.shape[0] - 1), dim=1)
    return {f: list(zip(i[n].tolist(), v[n].tolist())) for n, f in enumerate(features)}


def cooccurring(stats: FeatureStats, fire_counts: Tensor, k: int = N_NEIGHBOURS
                ) -> dict[int, list[tuple[int, float, int]]]:
    """Per feature: (latent, Jaccard index of their firing rows, rows both fire) of the `k`
    latents most often firing with it (itself excluded; none that never co-fire)."""
    out = {}
    for n, f in enumerate(stats.features):
        both = stats.cooccurrence[n].double()
        jac = both / (fire_counts[f] + fire_counts - both).double().clamp_min(1)
        jac[f] = -1.0
        v, i = jac.topk(min(k, jac.numel()))
        out[f] = [(int(a), float(b), int(both[a])) for a, b in zip(i, v) if b > 0]
    return out


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str),
                    encoding="utf-8")


# --- the files ----------------------------------------------------------------------------------
def feature_windows(top: TopExamples, stats: FeatureStats | None, features: list[int],
                    row_ctx: Tensor, row_pos: Tensor, n_tokens: int, window: tuple[int, int]
                    ) -> dict[int, list[tuple[str, list[Window]]]]:
    """Per feature: its groups of examples, (label, windows): the top examples, then the random
    examples of each activation interval, highest interval first."""
    out = {}
    for n, f in enumerate(features):
        groups = [("top activations", windows_of(f, top.values[f].tolist(),
                                                 top.row_ids[f].tolist(), row_ctx, row_pos,
                                                 n_tokens, window))]
        if stats is not None:
            Q = stats.sample_rows.shape[1]
            edges = [0.0, *stats.quantile_edges[n].tolist(), float(top.max_act[f])]
            for q in reversed(range(Q)):
                order = stats.sample_values[n, q].argsort(descending=True)
                wins = windows_of(f, stats.sample_values[n, q][order].tolist(),
                                  stats.sample_rows[n, q][order].tolist(), row_ctx, row_pos,
                                  n_tokens, window)
                label = (f"interval {q + 1} of {Q} by firing share "
                         f"({edges[q]:.3g} to {max(edges[q + 1], edges[q]):.3g})")
                groups.append((label, wins))
        out[f] = groups
    return out


def token_activations(dictionary, batches: Batches | None, groups: dict, rows_at: Tensor | None
                      ) -> dict[tuple[int, int, int], float]:
    """{(feature, ctx, pos): activation} on every token of every window (only the example's
    own token when there is no `batches` to read)."""
    acts: dict[tuple[int, int, int], float] = {}
    pairs: dict[tuple[int, int], int] = {}  # (row, feature) -> (feature, ctx, pos) key index
    keys = []
    for f, gs in groups.items():
        for _, wins in gs:
            for w in wins:
                acts[(f, w.ctx, w.pos)] = w.value
                if batches is None:
                    continue
                for p in range(w.start, w.stop):
                    row = int(rows_at[w.ctx, p])
                    if row >= 0 and (row, f) not in pairs:
                        pairs[(row, f)] = len(keys)
                        keys.append((f, w.ctx, p))
    if pairs:
        rows = torch.tensor([r for r, _ in pairs], dtype=torch.int64)
        feats = torch.tensor([f for _, f in pairs], dtype=torch.int64)
        values = window_activations(dictionary, batches(), rows, feats).tolist()
        acts.update(zip(keys, values))
    return acts


def context_record(w: Window, tokens: Tensor, text, acts: dict) -> dict:
    """One context as the pages show it: each token's text and the feature's activation on it
    (None where the store kept no row, e.g. a separator left out)."""
    ids = tokens[w.ctx, w.start:w.stop].tolist()
    return {"value": w.value, "ctx": w.ctx, "pos": w.pos, "row": w.row,
            "tokens": [[text(t), acts.get((w.feature, w.ctx, w.start + i)), w.start + i == w.pos]
                       for i, t in enumerate(ids)]}


def write_feature_data(root: Path, dictionary, top: TopExamples, features: list[int],
                       tokens: Tensor, row_ctx: Tensor, row_pos: Tensor, text,
                       effects: dict, window: tuple[int, int], meta: dict,
                       batches: Batches | None = None) -> list[dict]:
    """Write data/features.json, data/features/NNNNN.json and .svg under `root` (see the module
    docstring); with `batches`, two more passes over the store add the interval examples, the
    activation on every token shown and the co-occurring features. Returns the index records."""
    stats = (collect_feature_stats(dictionary, batches(), top, features)
             if batches is not None and features else None)
    groups = feature_windows(top, stats, features, row_ctx, row_pos, tokens.shape[1], window)
    rows_at = position_rows(row_ctx, row_pos, tuple(tokens.shape)) if batches else None
    acts = token_activations(dictionary, batches, groups, rows_at)
    nearest = nearest_by_decoder(dictionary.W_dec, features) if features else {}
    co = cooccurring(stats, top.fire_counts) if stats is not None else {}
    folder = root / "data" / "features"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for f in features:
        record = feature_record(f, top, groups[f], tokens, text, acts, effects.get(f))
        record.update(nearest=nearest.get(f, []), cooccurring=co.get(f, []))
        write_json(folder / f"{f:05d}.json", record)
        (folder / f"{f:05d}.svg").write_text(activation_svg(top, f), encoding="utf-8")
        index.append({k: record[k] for k in ("feature", "fire_count", "density", "max_act")}
                     | {"top_tokens": top_tokens(record),
                        "promoted": [t for t, _ in record["promoted"][:3]]})
    (root / "data" / "density.svg").write_text(density_svg(top), encoding="utf-8")
    write_json(root / "data" / "features.json", {**meta, "features": index})
    return index


def feature_record(f: int, top: TopExamples, groups, tokens: Tensor, text, acts: dict,
                   effects) -> dict:
    """The JSON record of one feature's page."""
    return {"feature": f, "fire_count": int(top.fire_counts[f]),
            "density": int(top.fire_counts[f]) / max(top.n_rows, 1),
            "max_act": float(top.max_act[f]),
            "groups": [{"label": label, "contexts": [context_record(w, tokens, text, acts)
                                                     for w in wins]}
                       for label, wins in groups if wins],
            "promoted": [[text(t), v] for t, v in effects[0]] if effects else [],
            "suppressed": [[text(t), v] for t, v in effects[1]] if effects else []}


def top_tokens(record: dict, k: int = 3) -> list[str]:
    """The distinct texts of the tokens the feature fires hardest on (up to `k`)."""
    seen: list[str] = []
    for group in record["groups"][:1]:
        for c in group["contexts"]:
            tok = next(t for t, _, focus in c["tokens"] if focus)
            if tok not in seen:
                seen.append(tok)
    return seen[:k]
