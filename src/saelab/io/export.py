"""Neuronpedia-style JSON export of a dictionary's dashboard data.

One JSON file: a header (model, layer/hookpoint id, dictionary sizes, rows seen) and one object
per feature in the shape Neuronpedia's feature pages use: `index`, `maxActApprox`,
`frac_nonzero`, the tokens each decoder direction promotes and suppresses (`pos_str`,
`pos_values`, `neg_str`, `neg_values`, when an unembedding is given), the activation histogram
(`freq_hist_data_bar_heights`, `freq_hist_data_bar_values`), the top contexts (`activations`:
`tokens`, `values`, `maxValue`, `maxValueTokenIndex`) and `explanations`.

saelab's top examples keep each context's peak activation only, so in `values` the highlighted
token carries it and the other tokens of the window are 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from saelab._paths import write_json
from saelab.errors import DataError
from saelab.interpret.dashboard import TokenText, check_features, logit_effects, select_features
from saelab.interpret.top_examples import TopExamples


class Example(NamedTuple):
    """One top example of a feature, with the token window around its peak."""

    value: float
    """The latent's activation on the peak token."""
    ctx: int
    """Context index (row of `tokens`)."""
    pos: int
    """Position of the peak token inside the context."""
    token_ids: list[int]
    """Token ids of the window around the peak token."""
    focus: int
    """Index of the peak token inside `token_ids`."""


def top_windows(top: TopExamples, feature: int, tokens: Tensor, row_ctx: Tensor,
                row_pos: Tensor, window: tuple[int, int]) -> list[Example]:
    """The top examples of `feature`, each with `window` = (before, after) tokens around it."""
    before, after = window
    out = []
    for value, row in zip(top.values[feature].tolist(), top.row_ids[feature].tolist()):
        if row < 0:
            break
        if row >= row_ctx.numel():
            raise DataError(f"row id {row} is outside row_ctx (it has {row_ctx.numel()} rows); "
                            "the top examples do not match this token metadata")
        ctx, pos = int(row_ctx[row]), int(row_pos[row])
        start = max(0, pos - before)
        out.append(Example(value, ctx, pos, tokens[ctx, start:pos + after + 1].tolist(),
                           pos - start))
    return out


def _histogram(top: TopExamples, f: int) -> tuple[list[int], list[float]]:
    counts = top.hist_counts[f].tolist()
    edges = top.hist_edges.tolist()
    centres = [(edges[i] * edges[i + 1]) ** 0.5 for i in range(len(counts))]  # log-spaced bins
    return counts, centres


def feature_record(f: int, top: TopExamples, tokens: Tensor, row_ctx: Tensor, row_pos: Tensor,
                   text: TokenText, window: tuple[int, int], effects: dict,
                   explanation: str | None, model_id: str, layer: str) -> dict[str, Any]:
    """The Neuronpedia-style object of feature `f`."""
    activations = []
    for c in top_windows(top, f, tokens, row_ctx, row_pos, window):
        values = [0.0] * len(c.token_ids)
        values[c.focus] = float(c.value)
        activations.append({"tokens": [text(t) for t in c.token_ids], "token_ids": c.token_ids,
                            "values": values, "maxValue": float(c.value),
                            "maxValueTokenIndex": c.focus, "context": c.ctx, "position": c.pos})
    heights, centres = _histogram(top, f)
    pos, neg = effects.get(f, ([], []))
    return {"modelId": model_id, "layer": layer, "index": str(f),
            "maxActApprox": float(top.max_act[f]),
            "frac_nonzero": int(top.fire_counts[f]) / max(1, top.n_rows),
            "pos_str": [text(t) for t, _ in pos], "pos_values": [v for _, v in pos],
            "neg_str": [text(t) for t, _ in neg], "neg_values": [v for _, v in neg],
            "freq_hist_data_bar_heights": heights, "freq_hist_data_bar_values": centres,
            "activations": activations,
            "explanations": [] if explanation is None else [{"description": explanation}]}


def neuronpedia_export(out_file: str | Path, dictionary, top: TopExamples, tokens: Tensor,
                       row_ctx: Tensor, row_pos: Tensor, tokenizer: Any = None, *,
                       features: list[int] | None = None, n_features: int = 200,
                       window: tuple[int, int] = (12, 4), unembed: Tensor | None = None,
                       explanations: dict[int, str] | None = None,
                       model_id: str | None = None, layer: str | None = None) -> Path:
    """Write the dashboard data of `features` (default: the dashboard's own selection) as one
    Neuronpedia-style JSON file, atomically. Inputs are those of `write_dashboard`;
    `explanations` maps a feature id to its text (e.g. from autointerp)."""
    prov = dictionary.provenance
    model_id = model_id or str(prov.get("model", "unknown"))
    layer = layer or str(prov.get("hookpoint", "unknown"))
    chosen = (check_features(features, dictionary.n_latents) if features is not None
              else select_features(top, n_features))
    text = TokenText(tokenizer)
    effects = {} if unembed is None else logit_effects(dictionary.W_dec, unembed, chosen)
    explanations = {int(k): v for k, v in (explanations or {}).items()}
    data = {"format": "saelab.neuronpedia/1", "modelId": model_id, "layer": layer,
            "architecture": dictionary.architecture, "d_in": dictionary.d_in,
            "n_latents": dictionary.n_latents, "n_rows": top.n_rows,
            "features": [feature_record(f, top, tokens, row_ctx, row_pos, text, window, effects,
                                        explanations.get(f), model_id, layer) for f in chosen]}
    write_json(out_file, data)
    return Path(out_file)
