"""The built-in end-to-end run (`saelab demo`, `make demo`): capture, train, evaluate and
dashboard on SmolLM2-135M and the packaged Wikipedia summaries, its `DemoConfig` composed of
the steps' own configs."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saelab._paths import write_json
from saelab.config import option, to_dict
from saelab.errors import OutputExistsError
from saelab.pipeline.capturing import CaptureConfig, capture, default_hookpoint
from saelab.pipeline.steps import DashboardOptions, EvalOptions
from saelab.train import TrainConfig

log = logging.getLogger(__name__)


def _architectures() -> list[str]:
    from saelab.dictionaries import names

    return names()


@dataclass
class DemoConfig:
    """The built-in end-to-end run: capture, train, evaluate, dashboard."""

    out: str = option("demo_out", "Folder for everything the demo writes.")
    capture: CaptureConfig = option(CaptureConfig(model_dtype="bfloat16"),
                                    "What is captured for training (its `n_tokens`); the "
                                    "held-out store follows it in the text. Both stores go under "
                                    "OUT/ (`out` is not used). The model runs in its "
                                    "`model_dtype` for the capture only (bfloat16: 2.8x faster "
                                    "on this CPU); evaluation and dashboard use it in float32.")
    eval_tokens: int = option(16_384, "Held-out tokens for the reconstruction metrics.")
    architecture: str = option("topk", "Dictionary architecture.", choices=_architectures)
    n_latents: int = option(4608, "Number of latents.")
    k: int = option(32, "Active latents per token (architectures with a `k` field).")
    train: TrainConfig = option(TrainConfig(epochs=4.0, batch_size=1024, checkpoint_every=250),
                                "How the dictionary is trained; the run goes to OUT/train, and "
                                "`dead_after_tokens` defaults to one pass over the data.")
    eval: EvalOptions = option(EvalOptions(), "How it is evaluated.")
    dashboard: DashboardOptions = option(DashboardOptions(), "What its dashboard shows.")
    overwrite: bool = option(False, "Replace a demo run with other settings in `out`.")
    progress: bool = option(True, "Show progress bars (of every step).")


def _settings(value):
    """The demo's settings as recorded in demo.json: without `overwrite` and `progress`."""
    if isinstance(value, dict):
        return {k: _settings(v) for k, v in value.items() if k not in ("overwrite", "progress")}
    return value


def _claim_out(cfg: DemoConfig) -> Path:
    """Use `out` for this demo: resume one with the same settings, refuse to clobber others."""
    out = Path(cfg.out)
    record = out / "demo.json"
    settings = _settings(to_dict(cfg))
    if out.exists() and any(out.iterdir()):
        same = record.is_file() and json.loads(record.read_text()) == settings
        if not same and not cfg.overwrite:
            raise OutputExistsError(f"{out} already holds something other than this demo run; "
                                    f"pass --overwrite to replace it, or --out another folder")
        if not same:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, settings)
    return out


def _demo_stores(cfg: DemoConfig, lm, out: Path, hookpoint: str):
    """The training store (cfg.capture's tokens) and the held-out one right after it."""
    from saelab.store.writer import DTYPES

    common = dict(hookpoints=[hookpoint], progress=cfg.progress, overwrite=False)
    if cfg.capture.model_dtype != "float32":  # a copy of the model in that dtype captures
        lm = lm._replace(model=copy.deepcopy(lm.model).to(DTYPES[cfg.capture.model_dtype]))
    train = capture(dataclasses.replace(cfg.capture, out=str(out / "store_train"), **common), lm)
    held_out = max(cfg.eval_tokens, cfg.eval.splice_tokens)
    evals = capture(dataclasses.replace(cfg.capture, out=str(out / "store_eval"),
                                        n_tokens=held_out,
                                        skip_tokens=cfg.capture.skip_tokens + cfg.capture.n_tokens,
                                        **common), lm)
    return train, evals


def _demo_train(cfg: DemoConfig, lm, out: Path, store):
    """Create and train the demo's dictionary on `store`; saved to OUT/sae."""
    import saelab
    from saelab.dictionaries import get

    fields = {f.name for f in dataclasses.fields(get(cfg.architecture).Config)}
    t = cfg.train
    sae = saelab.create(cfg.architecture, d_in=lm.d_model, n_latents=cfg.n_latents,
                        seed=t.seed, **({"k": cfg.k} if "k" in fields else {}))
    steps = t.steps or math.ceil(t.epochs * store.n_rows / t.batch_size)
    train_cfg = dataclasses.replace(
        t, steps=steps, out=str(out / "train"), progress=cfg.progress,
        dead_after_tokens=t.dead_after_tokens or min(2_000_000, store.n_rows))
    sae = saelab.fit(sae, store, train_cfg)
    sae.provenance.update(dataset=cfg.capture.dataset)
    sae.save(out / "sae")
    return sae


def run_demo(cfg: DemoConfig) -> dict:
    """Capture, train, evaluate and build the dashboard; returns the report (also on disk): the
    metric families' figures, and a `demo` entry (model, hookpoint, rows, seconds per step)."""
    from saelab.evaluate import headline
    from saelab.interpret import dashboard_from_store
    from saelab.models import load

    out = _claim_out(cfg)
    t0 = time.time()
    lm = load(cfg.capture.model)
    hookpoint = cfg.capture.hookpoints[0] if cfg.capture.hookpoints else default_hookpoint(
        lm, cfg.capture.layer)
    log.info("model %s loaded; hookpoint %s", lm.name, hookpoint)
    train_store, eval_store = _demo_stores(cfg, lm, out, hookpoint)
    t_capture = time.time()
    sae = _demo_train(cfg, lm, out, train_store)
    t_train = time.time()
    report = _demo_evaluate(cfg, lm, out, sae, eval_store, hookpoint)
    t_eval = time.time()
    figures = headline(report)
    dashboard_from_store(sae, train_store, out / "dashboard", tokenizer=lm.tokenizer,
                         unembed=lm.unembed, n_features=cfg.dashboard.n_features,
                         n_top=cfg.dashboard.n_top, progress=cfg.progress,
                         dictionary_path=out / "sae", extra={k: figures[k] for k in DASHBOARD_FIGURES if k in figures})
    seconds = {"load_and_capture": round(t_capture - t0, 1), "train": round(t_train - t_capture, 1),
               "evaluate": round(t_eval - t_train, 1), "dashboard": round(time.time() - t_eval, 1),
               "total": round(time.time() - t0, 1)}
    report["demo"] = {**_provenance(lm, hookpoint, train_store, eval_store), "seconds": seconds}
    write_json(out / "report.json", report)
    return report


DASHBOARD_FIGURES = ("fvu", "l0", "dead_fraction", "ce_loss_spliced")
"""The headline figures the demo's dashboard shows on its first page."""


def _demo_evaluate(cfg: DemoConfig, lm, out: Path, sae, store, hookpoint: str) -> dict:
    """The demo's report: `cfg.eval` on the held-out store, the spliced loss on its first
    `splice_tokens` tokens."""
    from saelab.capture.exclude import Exclusion
    from saelab.evaluate import evaluate

    kwargs: dict = {}
    if cfg.eval.splice_tokens > 0:
        n_splice = max(1, cfg.eval.splice_tokens // cfg.capture.context_len)
        kwargs.update(model=lm.model, tokens=store.contexts()["tokens"][:n_splice],
                      exclusion=Exclusion.from_json(store.manifest["exclusion"]))
    return evaluate(sae, store, metrics=cfg.eval.metrics, hookpoint=hookpoint, out=out,
                    progress=cfg.progress, **kwargs)


def _provenance(lm, hookpoint: str, train_store, eval_store) -> dict:
    m = train_store.manifest
    excluded = m["excluded_rows"] / max(1, m["excluded_rows"] + train_store.n_rows)
    return {"model": lm.name, "hookpoint": hookpoint, "train_rows": train_store.n_rows,
            "eval_rows": eval_store.n_rows, "excluded_fraction": excluded,
            "exclusion_rule": m["exclusion"], "torch_threads": torch.get_num_threads()}
