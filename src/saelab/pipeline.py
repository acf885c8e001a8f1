"""The main job, step by step: capture, train, evaluate, dashboard. Each step is a function
with a config dataclass; the CLI commands are thin wrappers over them, and `run_demo` chains
them on the built-in default (SmolLM2-135M, the packaged Wikipedia summaries)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saelab._paths import write_json
from saelab.config import check, option, to_dict
from saelab.errors import OutputExistsError

log = logging.getLogger(__name__)


@dataclass
class CaptureConfig:
    """Capture activations of a model on a text source into an activation store."""

    out: str = option("activations", "Folder of the activation store.")
    model: str = option("smollm2-135m", "Packaged alias, local folder or Hugging Face name.")
    hookpoints: list[str] = option([], "Module names or patterns, with an optional ':site' "
                                       "(output, input, delta); default: the middle layer.")
    layer: int | None = option(None, "Block index used when no hookpoint is given (default: "
                                     "the middle one).")
    dataset: str = option("wikipedia", "'wikipedia' (packaged), a .txt/.jsonl file or folder, "
                                       "or 'hf:NAME[:split]'.")
    context_len: int = option(128, "Tokens per context.")
    n_tokens: int = option(250_000, "Tokens to capture (rounded to whole contexts).")
    skip_tokens: int = option(0, "Tokens of the dataset to skip first (to hold text out).")
    batch_contexts: int = option(8, "Contexts per model forward.")
    shard_rows: int = option(1 << 16, "Rows per shard file.")
    dtype: str = option("float32", "Storage dtype: float32, float16 or bfloat16.")
    norm_factor: float | None = option(5.0, "Leave out rows whose norm exceeds this multiple of "
                                            "the median (massive activations); None keeps all.")
    exclude_special: bool = option(True, "Leave out BOS, EOS and separator tokens.")
    gradients: bool = option(False, "Also store d(next-token loss)/d(activation) as "
                                    "'<hookpoint>.grad' (one hookpoint, a causal LM), for "
                                    "gsae_gradient.")
    overwrite: bool = option(False, "Replace a store captured with other settings.")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        check(self.context_len >= 2, "context_len", "must be at least 2")
        check(self.n_tokens >= self.context_len, "n_tokens", "must be at least one context")
        check(self.skip_tokens >= 0, "skip_tokens", "must be >= 0")


def default_hookpoint(lm, layer: int | None) -> str:
    """The residual stream after block `layer` (default: the middle block)."""
    layer = lm.n_layers // 2 if layer is None else layer
    check(0 <= layer < lm.n_layers, "layer", f"must be in [0, {lm.n_layers - 1}], got {layer}")
    return lm.layer_template.format(layer)


def tokenise(lm, dataset: str, context_len: int, n_contexts: int, skip_contexts: int = 0):
    """Contexts [skip, skip + n) of `dataset` packed for `lm`'s tokenizer."""
    from saelab.data import pack, read_documents

    corpus = pack(read_documents(dataset), lm.tokenizer, context_len,
                  max_contexts=skip_contexts + n_contexts)
    return corpus._replace(tokens=corpus.tokens[skip_contexts:],
                           doc_ids=corpus.doc_ids[skip_contexts:])


def capture(cfg: CaptureConfig, lm=None):
    """Run a capture as configured; returns the ActivationStore."""
    from saelab.models import load
    from saelab.store import capture_to_store

    lm = lm or load(cfg.model)
    hookpoints = cfg.hookpoints or [default_hookpoint(lm, cfg.layer)]
    n_ctx = max(1, cfg.n_tokens // cfg.context_len)
    corpus = tokenise(lm, cfg.dataset, cfg.context_len, n_ctx, cfg.skip_tokens // cfg.context_len)
    return capture_to_store(lm.model, corpus.tokens, hookpoints, cfg.out, model_name=lm.name,
                            doc_ids=corpus.doc_ids,
                            special_ids=corpus.special_ids if cfg.exclude_special else [],
                            norm_factor=cfg.norm_factor, batch_contexts=cfg.batch_contexts,
                            shard_rows=cfg.shard_rows, dtype=cfg.dtype, overwrite=cfg.overwrite,
                            progress=cfg.progress, gradients=cfg.gradients)


def dashboard(sae, store, out: str | Path, lm=None, n_features: int = 200, n_top: int = 20,
              extra: dict | None = None, progress: bool = True) -> Path:
    """Top examples of `sae` over `store` (one streaming pass) and the static HTML dashboard."""
    from saelab.interpret import collect_top_examples, write_dashboard
    from saelab.models import load_tokenizer
    from saelab.store import ActivationStore

    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    key = sae.provenance.get("hookpoint")
    key = key if key in store.hookpoints else None
    top = collect_top_examples(sae, store.iter_rows(key), n_top=n_top, progress=progress)
    rows = store.row_index()
    tokenizer = lm.tokenizer if lm is not None else load_tokenizer(store.model)
    unembed = lm.unembed if lm is not None else None
    return write_dashboard(out, sae, top, store.contexts()["tokens"], rows["ctx"], rows["pos"],
                           tokenizer, unembed=unembed, n_features=n_features,
                           title=f"saelab: {sae.architecture} on {store.model} "
                                 f"{store.hookpoint(key)}", extra=extra)


@dataclass
class DemoConfig:
    """The built-in end-to-end run: capture, train, evaluate, dashboard."""

    out: str = option("demo_out", "Folder for everything the demo writes.")
    model: str = option("smollm2-135m", "Model to capture from.")
    layer: int | None = option(None, "Block whose output is captured (default: the middle one).")
    dataset: str = option("wikipedia", "Text source (see `saelab capture --help`).")
    context_len: int = option(128, "Tokens per context.")
    train_tokens: int = option(250_000, "Tokens captured for training.")
    eval_tokens: int = option(16_384, "Held-out tokens for the reconstruction metrics.")
    splice_tokens: int = option(8_192, "Held-out tokens for the spliced next-token loss.")
    architecture: str = option("topk", "Dictionary architecture.")
    n_latents: int = option(4608, "Number of latents.")
    k: int = option(32, "Active latents per token (TopK-style architectures).")
    epochs: float = option(4.0, "Passes over the training activations.")
    batch_size: int = option(1024, "Vectors per optimiser step.")
    lr: float | None = option(None, "Learning rate (default: scaled from the batch size).")
    n_features: int = option(200, "Features shown in the dashboard.")
    seed: int = option(0, "Seed of everything random.")
    overwrite: bool = option(False, "Replace a demo run with other settings in `out`.")
    progress: bool = option(True, "Show progress bars.")


def _claim_out(cfg: DemoConfig) -> Path:
    """Use `out` for this demo: resume one with the same settings, refuse to clobber others."""
    out = Path(cfg.out)
    record = out / "demo.json"
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("overwrite", "progress")}
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


def run_demo(cfg: DemoConfig) -> dict:
    """Capture, train, evaluate and build the dashboard; returns the report (also on disk)."""
    import saelab
    from saelab.capture.exclude import Exclusion
    from saelab.evaluate import evaluate
    from saelab.models import load

    out = _claim_out(cfg)
    t0 = time.time()
    lm = load(cfg.model)
    hookpoint = default_hookpoint(lm, cfg.layer)
    log.info("model %s loaded; hookpoint %s", lm.name, hookpoint)
    common = dict(model=cfg.model, hookpoints=[hookpoint], dataset=cfg.dataset,
                  context_len=cfg.context_len, progress=cfg.progress)
    train_store = capture(CaptureConfig(out=str(out / "store_train"), n_tokens=cfg.train_tokens,
                                        **common), lm)
    held_out = max(cfg.eval_tokens, cfg.splice_tokens)
    eval_store = capture(CaptureConfig(out=str(out / "store_eval"), n_tokens=held_out,
                                       skip_tokens=cfg.train_tokens, **common), lm)
    t_capture = time.time()

    sae = saelab.create(cfg.architecture, d_in=lm.d_model, n_latents=cfg.n_latents,
                        **({"k": cfg.k} if cfg.architecture == "topk" else {}))
    steps = math.ceil(cfg.epochs * train_store.n_rows / cfg.batch_size)
    train_cfg = saelab.TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                   seed=cfg.seed, out=str(out / "train"), checkpoint_every=250,
                                   dead_after_tokens=min(2_000_000, train_store.n_rows),
                                   progress=cfg.progress)
    sae = saelab.fit(sae, train_store, train_cfg)
    sae.provenance.update(dataset=cfg.dataset)
    sae.save(out / "sae")
    t_train = time.time()

    n_splice = max(1, cfg.splice_tokens // cfg.context_len)
    splice_tokens = eval_store.contexts()["tokens"][:n_splice]
    exclusion = Exclusion.from_json(eval_store.manifest["exclusion"])
    report = evaluate(sae, eval_store, hookpoint=hookpoint, model=lm.model, tokens=splice_tokens,
                      exclusion=exclusion, out=out, progress=cfg.progress)
    report.update(_provenance(cfg, lm, hookpoint, train_store, eval_store))
    t_eval = time.time()
    dashboard(sae, train_store, out / "dashboard", lm, n_features=cfg.n_features,
              extra={k: report[k] for k in ("fvu", "l0", "dead_fraction", "ce_loss_spliced")},
              progress=cfg.progress)
    report["seconds"] = {"load_and_capture": round(t_capture - t0, 1),
                         "train": round(t_train - t_capture, 1),
                         "evaluate": round(t_eval - t_train, 1),
                         "dashboard": round(time.time() - t_eval, 1),
                         "total": round(time.time() - t0, 1)}
    write_json(out / "report.json", report)
    return report


def _provenance(cfg: DemoConfig, lm, hookpoint: str, train_store, eval_store) -> dict:
    m = train_store.manifest
    excluded = m["excluded_rows"] / max(1, m["excluded_rows"] + train_store.n_rows)
    return {"model": lm.name, "hookpoint": hookpoint, "train_rows": train_store.n_rows,
            "eval_rows": eval_store.n_rows, "excluded_fraction": excluded,
            "exclusion_rule": m["exclusion"], "torch_threads": torch.get_num_threads()}
