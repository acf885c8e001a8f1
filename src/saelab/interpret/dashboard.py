"""Static HTML feature dashboards: one index page and one small page per feature.

The output folder holds `index.html` (summary, feature-density histogram, feature table),
`features/NNNNN.html` (one page per feature, rendered from the feature browser's data with the
browser's own Jinja2 template: contexts by activation interval with every token shaded,
activation histogram, logit effect, nearest and co-occurring features), `data/` (that data,
saelab.interpret.feature_data, which `saelab view` serves) and `dashboard.json` (what was
written). Pages are plain HTML with a little inline CSS and inline SVG charts: no JavaScript,
no external URL, so they open from file:// without a server. Every piece of text that comes
from data (tokens, titles, extra values) is HTML-escaped.

Tokens are rendered (saelab.interpret.html) with `tokenizer.decode([id])`, one id at a time
(cached), which is right for byte-level BPE; a SentencePiece word-start marker ('▁') found by
`convert_ids_to_tokens` becomes a leading space. Newlines show as '↵', tabs as '⇥', other control characters as \\xNN.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab._paths import atomic_path
from saelab.errors import ConfigError, DataError, OutputExistsError
from saelab.interpret.feature_data import Batches, write_feature_data
from saelab.interpret.html import TokenText, templates
from saelab.interpret.top_examples import TopExamples

log = logging.getLogger(__name__)

DENSE_FREQ = 0.1
"""A latent firing on more than this fraction of rows counts as dense in the summary."""
SEED = 0
"""Seed of the random part of the default feature selection."""
MARKER = "dashboard.json"
"""File that marks a folder as a saelab dashboard (such a folder may be replaced)."""

# --- which features ---------------------------------------------------------------------------
def select_features(top: TopExamples, n_features: int = 200, seed: int = SEED) -> list[int]:
    """Default feature selection: live latents only (fire_counts > 0); if more than
    `n_features`, the ceil(n/2) most frequent plus a seeded random sample of the rest. Returned
    sorted by firing count, descending (ties by id)."""
    live = (top.fire_counts > 0).nonzero().flatten()
    if live.numel() > n_features:
        by_freq = live[top.fire_counts[live].argsort(descending=True, stable=True)]
        n_head = (n_features + 1) // 2
        rest = by_freq[n_head:]
        gen = torch.Generator().manual_seed(seed)
        sample = rest[torch.randperm(rest.numel(), generator=gen)[:n_features - n_head]]
        live = torch.cat([by_freq[:n_head], sample]).sort().values
    order = top.fire_counts[live].argsort(descending=True, stable=True)
    return live[order].tolist()


def check_features(features: Sequence[int], n_latents: int) -> list[int]:
    """`features` as ints, repeats dropped (order kept); a ConfigError for an id outside
    [0, n_latents)."""
    features = [int(f) for f in features]
    bad = [f for f in features if not 0 <= f < n_latents]
    if bad:
        raise ConfigError(f"features: ids {bad[:5]} are outside [0, {n_latents})")
    return list(dict.fromkeys(features))  # drop repeats, keep order




# --- data gathering ---------------------------------------------------------------------------
def logit_effects(W_dec: Tensor, unembed: Tensor, features: list[int], k: int = 10,
                  chunk: int = 64) -> dict[int, tuple[list[tuple[int, float]], ...]]:
    """Top and bottom `k` tokens of W_dec[f] @ unembed.T for each feature: the direct effect of
    the decoder direction on the logits (no final norm). Computed `chunk` features at a time."""
    if unembed.ndim != 2 or unembed.shape[1] != W_dec.shape[1]:
        raise DataError(f"unembed must be [vocab, d_out={W_dec.shape[1]}], "
                        f"got {list(unembed.shape)}")
    k = min(k, unembed.shape[0])
    out = {}
    with torch.no_grad():
        U = unembed.detach()
        for i in range(0, len(features), chunk):
            ids = features[i:i + chunk]
            rows = W_dec.detach()[ids].to(device=U.device, dtype=U.dtype)
            logits_FV = (rows @ U.t()).float().cpu()
            hi_v, hi_i = logits_FV.topk(k, dim=1)
            lo_v, lo_i = logits_FV.topk(k, dim=1, largest=False)
            for j, f in enumerate(ids):
                out[f] = (list(zip(hi_i[j].tolist(), hi_v[j].tolist())),
                          list(zip(lo_i[j].tolist(), lo_v[j].tolist())))
    return out


# --- summary ------------------------------------------------------------------------------------
def summary_items(dictionary, top: TopExamples, n_shown: int, extra: dict | None
                  ) -> list[tuple[str, Any]]:
    """(name, value) rows of the summary: dictionary, rows, dead and dense counts, `extra`."""
    n = top.fire_counts.numel()
    freq = top.fire_counts.double() / max(top.n_rows, 1)
    dead, dense = int((top.fire_counts == 0).sum()), int((freq > DENSE_FREQ).sum())
    arch = getattr(dictionary, "architecture", "") or type(dictionary).__name__
    items: list[tuple[str, Any]] = [
        ("architecture", f"{arch} · d_in {dictionary.d_in} · latents {n}"),
        ("rows seen", top.n_rows),
        ("dead latents", f"{dead} ({dead / max(n, 1):.1%})"),
        (f"dense latents (> {DENSE_FREQ:.0%})", f"{dense} ({dense / max(n, 1):.1%})"),
        ("features shown", n_shown)]
    for key in ("model", "hookpoint", "site", "dataset"):
        if getattr(dictionary, "provenance", {}).get(key):
            items.append((key, dictionary.provenance[key]))
    items += list((extra or {}).items())
    return items


# --- entry point ------------------------------------------------------------------------------
def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a saelab dashboard."""
    if out_dir.exists() and not (out_dir / MARKER).is_file() and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputExistsError(f"{out_dir} exists and is not a saelab dashboard; "
                                "choose another output folder or remove it")


def _check_inputs(top: TopExamples, tokens: Tensor, row_ctx: Tensor, row_pos: Tensor,
                  n_latents: int) -> None:
    if top.values.shape[0] != n_latents:
        raise DataError(f"top examples have {top.values.shape[0]} latents, the dictionary "
                        f"{n_latents}")
    if tokens.ndim != 2 or row_ctx.shape != row_pos.shape or row_ctx.ndim != 1:
        raise DataError(f"need tokens [N_ctx, T] and row_ctx, row_pos [N_rows]; got "
                        f"{list(tokens.shape)}, {list(row_ctx.shape)}, {list(row_pos.shape)}")


def write_dashboard(out_dir: str | os.PathLike, dictionary, top: TopExamples, tokens: Tensor,
                    row_ctx: Tensor, row_pos: Tensor, tokenizer: Any,
                    unembed: Tensor | None = None, features: list[int] | None = None,
                    n_features: int = 200, window: tuple[int, int] = (12, 4),
                    title: str = "saelab dashboard", extra: dict | None = None,
                    batches: Batches | None = None, sources: dict | None = None) -> Path:
    """Write a static HTML dashboard of `features` (default: `select_features(top,
    n_features)`) to `out_dir`, replacing a previous dashboard there atomically.

    tokens [N_ctx, T] int64 holds every context; row_ctx and row_pos [N_rows] map a global row
    id to its context and position. `window` = (tokens before, tokens after) the active one.
    `unembed` [vocab, d_out] adds each feature's top and bottom 10 logit effects. `tokenizer`
    needs `decode(list[int])` (None shows token ids). `extra` (e.g. headline metrics) is shown
    in the summary table. Returns `out_dir`.

    The data behind `saelab view` goes to `data/` (saelab.interpret.feature_data); `batches`, a
    callable giving a fresh pass of (acts, row_ids) over the rows `top` was collected on, adds
    the examples of each activation interval, the activation on every token shown and the
    co-occurring features. `sources` (dictionary folder, model, hookpoint) lets the viewer run
    the model on a prompt.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    _check_inputs(top, tokens, row_ctx, row_pos, dictionary.n_latents)
    chosen = (check_features(features, dictionary.n_latents) if features is not None
              else select_features(top, n_features))
    text = TokenText(tokenizer)
    effects = ({} if unembed is None else
               logit_effects(dictionary.W_dec, unembed, chosen))
    with atomic_path(out_dir) as tmp:
        meta = {"title": title, "n_rows": top.n_rows, "n_latents": dictionary.n_latents,
                "features": chosen, "extra": extra or {}, "sources": sources or {},
                "causal_lm": unembed is not None}
        index = write_feature_data(tmp, dictionary, top, chosen, tokens, row_ctx, row_pos, text,
                                   effects, window,
                                   {k: v for k, v in meta.items() if k != "features"}
                                   | {"summary": summary_items(dictionary, top, len(chosen),
                                                               extra)}, batches)
        _write_pages(tmp, chosen, index, title, top.n_rows)
        (tmp / MARKER).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    log.info("wrote a dashboard of %d features to %s", len(chosen), out_dir)
    return out_dir


def _write_pages(root: Path, chosen: list[int], index: list[dict], title: str,
                 n_rows: int) -> None:
    """Write index.html and features/NNNNN.html from the browser data (written first), with the
    browser's own templates, their links turned into relative file links."""
    env = templates()
    meta = json.loads((root / "data" / "features.json").read_text(encoding="utf-8"))
    density = root / "data" / "density.svg"
    env.globals.update(meta=meta, static=True, home="index.html",
                       feature_url=lambda f: f"features/{f:05d}.html")
    rows = sorted(({**r, "explanation": None, "score": None} for r in index),
                  key=lambda r: r["density"], reverse=True)
    (root / "index.html").write_text(env.get_template("list.html").render(
        rows=rows, q="", sort="density", desc=True, total=len(rows),
        density=density.read_text(encoding="utf-8") if density.is_file() else ""),
        encoding="utf-8")
    env.globals.update(meta={"title": title, "n_rows": n_rows}, home="../index.html",
                       feature_url=lambda f: f"{f:05d}.html")
    template = env.get_template("feature.html")
    shown = set(chosen)
    data = root / "data" / "features"
    (root / "features").mkdir(parents=True)
    for i, f in enumerate(chosen):
        rec = json.loads((data / f"{f:05d}.json").read_text(encoding="utf-8"))
        rec.update(histogram=(data / f"{f:05d}.svg").read_text(encoding="utf-8"), explained=None)
        nav = (chosen[i - 1] if i > 0 else None, chosen[i + 1] if i + 1 < len(chosen) else None)
        (root / "features" / f"{f:05d}.html").write_text(
            template.render(rec=rec, nav=nav, shown=shown), encoding="utf-8")
