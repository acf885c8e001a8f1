"""The steps behind `saelab stitch` (fit the maps between two models) and `saelab transfer`
(carry a dictionary through a saved map)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from saelab.capture.exclude import NORM_FACTOR
from saelab.config import option, required
from saelab.data import read_documents
from saelab.errors import ConfigError, OutputExistsError
from saelab.transfer.affine import MAP_FILE, Stitch, fit_stitch
from saelab.transfer.paired import paired_activations
from saelab.transfer.transfer import maps_from, side_of, transfer_dictionary

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StitchConfig:
    """Fit affine maps both ways between two models' residual streams on the same text."""

    model_a: str = required("First model: a packaged alias (smollm2-135m, gemma3-270m), a "
                            "folder or a Hub name.", positional=True)
    hookpoint_a: str = required("Its hookpoint (a module name, e.g. model.layers.10).",
                                positional=True)
    model_b: str = required("Second model.", positional=True)
    hookpoint_b: str = required("Its hookpoint.", positional=True)
    out: str = required("Folder for the map (map.safetensors + map.json).")
    text: str = option("wikipedia", "Text both models read: wikipedia (packaged), a .txt or "
                                    ".jsonl file, a folder of .txt files, or hf:NAME[:SPLIT].")
    documents: int = option(2000, "Documents read from the text.")
    max_tokens: int = option(128, "Tokens of each document each model reads.")
    max_rows: int | None = option(None, "Stop once this many aligned positions are kept.")
    ridge: float = option(0.0, "Ridge penalty, relative to the mean variance of the input "
                               "stream (0: plain least squares).")
    holdout: float = option(0.2, "Fraction of the documents held out to measure the maps.")
    norm_factor: float | None = option(NORM_FACTOR, "Leave out positions whose norm exceeds "
                                                    "this multiple of the median (None: keep).")
    batch_size: int = option(8, "Documents per model forward.")
    overwrite: bool = option(False, "Replace an existing map in `out`.")


@dataclass(kw_only=True)
class TransferConfig:
    """Carry a dictionary to the other model of a map written by `saelab stitch`."""

    dictionary: str = required("Dictionary folder (any known format) on one of the map's two "
                               "hookpoints.", positional=True)
    map: str = required("Map folder written by `saelab stitch`.", positional=True)
    out: str = required("Folder for the transferred dictionary.")
    allow_hookpoint_mismatch: bool = option(False, "Transfer a dictionary whose recorded "
                                                   "hookpoint is not the map's.")
    overwrite: bool = option(False, "Replace an existing dictionary in `out`.")


def stitch_step(cfg: StitchConfig) -> Stitch:
    """Load both models, align their tokens on the text, fit and measure the maps, save them."""
    from saelab.models import load

    out = Path(cfg.out)
    if (out / MAP_FILE).exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out} already holds a map; pass --overwrite to replace it")
    if cfg.documents < 2 or cfg.max_tokens < 2:
        raise ConfigError(f"documents and max_tokens must be at least 2, got {cfg.documents} "
                          f"and {cfg.max_tokens}")
    docs = read_documents(cfg.text, limit=cfg.documents)
    lm_a, lm_b = load(cfg.model_a), load(cfg.model_b)
    pairs = paired_activations(lm_a, cfg.hookpoint_a, lm_b, cfg.hookpoint_b, docs,
                               max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                               norm_factor=cfg.norm_factor, max_rows=cfg.max_rows,
                               progress=True)
    info = {"model_a": lm_a.name, "hookpoint_a": cfg.hookpoint_a, "model_b": lm_b.name,
            "hookpoint_b": cfg.hookpoint_b, "text": cfg.text, "documents": len(docs),
            "max_tokens": cfg.max_tokens, "norm_factor": cfg.norm_factor,
            "counts": pairs.counts, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    stitch = fit_stitch(pairs.x_a, pairs.x_b, pairs.doc, ridge=cfg.ridge, holdout=cfg.holdout,
                        info=info)
    stitch.save(out)
    return stitch


def transfer_step(cfg: TransferConfig):
    """Read the dictionary and the map, transfer, save; returns the transferred dictionary."""
    from saelab.io import load

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace it")
    dictionary, stitch = load(cfg.dictionary), Stitch.load(cfg.map)
    source = side_of(dictionary, stitch, cfg.allow_hookpoint_mismatch)
    target = "b" if source == "a" else "a"
    up, down = maps_from(stitch, source)
    transferred = transfer_dictionary(dictionary, up, down, provenance={
        "model": stitch.info.get(f"model_{target}"),
        "hookpoint": stitch.info.get(f"hookpoint_{target}"),
        "transfer_map": str(Path(cfg.map).resolve()),
        "transfer_figures": stitch.figures().get(f"{source}_to_{target}")})
    transferred.save(out)
    return transferred


def format_stitch(stitch: Stitch) -> str:
    """What `saelab stitch` prints: the alignment counts and held-out R^2 and cosine both ways."""
    info, figures = stitch.info, stitch.figures()
    c = info.get("counts", {})
    lines = [f"aligned {c.get('aligned', 0):,} positions by character offset "
             f"({c.get('tokens_a', 0):,} tokens of {info.get('model_a')}, "
             f"{c.get('tokens_b', 0):,} of {info.get('model_b')}); kept {c.get('kept', 0):,} "
             f"({info.get('fit_rows', 0):,} to fit, {info.get('heldout_rows', 0):,} held out)"]
    for key, (src, dst) in (("a_to_b", ("a", "b")), ("b_to_a", ("b", "a"))):
        f = figures.get(key, {})
        lines.append(f"{info.get('model_' + src)} {info.get('hookpoint_' + src)} -> "
                     f"{info.get('model_' + dst)} {info.get('hookpoint_' + dst)}: held-out R^2 "
                     f"{f.get('r2', float('nan')):.4f}, cosine {f.get('cosine', float('nan')):.4f}")
    return "\n".join(lines)
