"""The main job, step by step: capture, evaluate, dashboard (training is `saelab.fit`). Each
step is a function with a config dataclass; the CLI commands are thin wrappers over them, and
`run_demo` chains them on the built-in default (SmolLM2-135M, the packaged Wikipedia
summaries), its `DemoConfig` composed of the steps' own configs."""

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
from typing import Literal

import torch

from saelab._paths import write_json
from saelab.capture import BATCH_CONTEXTS
from saelab.capture.exclude import NORM_FACTOR
from saelab.config import check, check_device, option, required, to_dict, torch_device
from saelab.errors import ConfigError, DataError, OutputExistsError
from saelab.train import TrainConfig

log = logging.getLogger(__name__)


def _families() -> list[str]:
    from saelab.evaluate import families

    return families()


def _architectures() -> list[str]:
    from saelab.dictionaries import names

    return names()


@dataclass
class CaptureConfig:
    """Capture activations of a model on a text source into an activation store."""

    out: str = option("activations", "Folder of the activation store.")
    model: str = option("smollm2-135m", "Packaged alias, local folder or Hugging Face name.")
    hookpoints: list[str] = option([], "Module names or patterns, with an optional ':site' "
                                       "(output, input, delta); default: the middle layer. "
                                       "`saelab hookpoints MODEL` lists them.")
    layer: int | None = option(None, "Block index used when no hookpoint is given (default: "
                                     "the middle one).")
    dataset: str = option("wikipedia", "'wikipedia' (packaged), a .txt/.jsonl file or folder, "
                                       "or 'hf:NAME[:split]'; for a vision model: 'skimage', "
                                       "'lfw', 'digits', 'sklearn-samples', a folder of "
                                       "images, or 'hf:NAME[:split]'.")
    context_len: int = option(128, "Tokens per context.")
    n_tokens: int = option(250_000, "Tokens to capture (rounded to whole contexts; fewer, with a "
                                    "warning, when the text runs out).")
    skip_tokens: int = option(0, "Tokens of the dataset to skip first (to hold text out).")
    batch_contexts: int = option(BATCH_CONTEXTS, "Contexts per model forward.")
    shard_rows: int = option(1 << 16, "Rows per shard file.")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "Storage dtype.")
    device: str = option("cpu", "Device the model runs on: cpu, cuda, cuda:N or auto (cuda when "
                                "available). Under torchrun with cuda, each process uses the GPU "
                                "of its local rank.")
    model_dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", "Dtype of the model's weights during capture (bfloat16 halves its memory, "
                   "and ran SmolLM2 2.8x faster on a CPU with AVX-512 BF16; activations are "
                   "stored in `dtype`).")
    norm_factor: float | None = option(NORM_FACTOR, "Leave out rows whose norm exceeds this "
                                                    "multiple of the median (massive "
                                                    "activations); None keeps all.")
    exclude_special: bool = option(True, "Leave out BOS, EOS and separator tokens.")
    image_rows: Literal["patches", "cls", "pooled", "all"] = option(
        "patches", "Vision models: the rows each image gives (every patch token, the CLS "
                   "token, the mean of the patch tokens, or every token).")
    n_images: int | None = option(None, "Vision models: images to capture (default: all).")
    skip_images: int = option(0, "Vision models: images of the dataset to skip first.")
    gradients: bool = option(False, "Also store d(next-token loss)/d(activation) as "
                                    "'<hookpoint>.grad' (one hookpoint, a causal LM), for "
                                    "gsae_gradient.")
    overwrite: bool = option(False, "Replace a store captured with other settings.")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        check(self.context_len >= 2, "context_len", "must be at least 2")
        check(self.n_tokens >= self.context_len, "n_tokens", "must be at least one context")
        check(self.skip_tokens >= 0, "skip_tokens", "must be >= 0")
        check_device(self.device)


def default_hookpoint(lm, layer: int | None) -> str:
    """The residual stream after block `layer` (default: the middle block)."""
    layer = lm.n_layers // 2 if layer is None else layer
    check(0 <= layer < lm.n_layers, "layer", f"must be in [0, {lm.n_layers - 1}], got {layer}")
    return lm.layer_template.format(layer)


def tokenise(lm, dataset: str, context_len: int, n_contexts: int, skip_contexts: int = 0):
    """Contexts [skip, skip + n) of `dataset` packed for `lm`'s tokenizer (fewer when the text
    runs out; none left after the skip is a DataError)."""
    from saelab.data import pack, read_documents

    corpus = pack(read_documents(dataset), lm.tokenizer, context_len,
                  max_contexts=skip_contexts + n_contexts)
    if corpus.tokens.shape[0] <= skip_contexts:
        raise DataError(f"{dataset} holds {corpus.tokens.shape[0] * context_len:,} tokens, none "
                        f"left after skipping {skip_contexts * context_len:,}; skip fewer "
                        f"tokens or use a larger text")
    return corpus._replace(tokens=corpus.tokens[skip_contexts:],
                           doc_ids=corpus.doc_ids[skip_contexts:])


def capture(cfg: CaptureConfig, lm=None):
    """Run a capture as configured; returns the ActivationStore. When the text runs out before
    `n_tokens`, logs a warning with the count captured, also recorded in the store's manifest
    (`requested_tokens`, `captured_tokens`). Started by torchrun, every process captures its
    share of the contexts into the one store (saelab.store.ranks)."""
    from saelab.train.distributed import init_from_env, is_initialized

    started = not is_initialized() and init_from_env(cfg.device)
    try:
        return _capture(cfg, lm)
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _capture(cfg: CaptureConfig, lm):
    from saelab.models import load
    from saelab.store import capture_to_store
    from saelab.store.writer import DTYPES

    device = torch_device(cfg.device)
    if device.type == "cuda" and device.index is None and torch.distributed.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if lm is None:  # a model passed in stays where it is
        lm = load(cfg.model, dtype=DTYPES[cfg.model_dtype])
        lm.model.to(device)
    hookpoints = cfg.hookpoints or [default_hookpoint(lm, cfg.layer)]
    if lm.kind == "vision":
        return capture_images(cfg, lm, hookpoints)
    n_ctx = max(1, cfg.n_tokens // cfg.context_len)
    corpus = tokenise(lm, cfg.dataset, cfg.context_len, n_ctx, cfg.skip_tokens // cfg.context_len)
    store = capture_to_store(lm.model, corpus.tokens, hookpoints, cfg.out, model_name=lm.name,
                             doc_ids=corpus.doc_ids,
                             special_ids=corpus.special_ids if cfg.exclude_special else [],
                             norm_factor=cfg.norm_factor, batch_contexts=cfg.batch_contexts,
                             shard_rows=cfg.shard_rows, dtype=cfg.dtype, overwrite=cfg.overwrite,
                             progress=cfg.progress, gradients=cfg.gradients)
    if corpus.tokens.shape[0] < n_ctx:
        return _text_ran_out(store, cfg, corpus.tokens.numel())
    return store


def capture_images(cfg: CaptureConfig, lm, hookpoints: list[str]):
    """Capture a vision model on the images of `cfg.dataset` (saelab.data.images), preprocessed
    by the model's own processor, `cfg.image_rows` per image; returns the ActivationStore."""
    from saelab.data.images import IMAGE_SOURCES, read_images
    from saelab.data.pixels import pixel_values
    from saelab.store.images import capture_images_to_store

    if cfg.dataset == "wikipedia":
        raise DataError(f"{lm.name} is a vision model and 'wikipedia' is text: pass --dataset "
                        f"{', '.join(IMAGE_SOURCES)}, a folder of images, or hf:NAME")
    limit = None if cfg.n_images is None else cfg.skip_images + cfg.n_images
    items = read_images(cfg.dataset, limit=limit)[cfg.skip_images:]
    if not items:
        raise DataError(f"{cfg.dataset} holds no images after skipping {cfg.skip_images}")
    source = {"dataset": cfg.dataset, "skip_images": cfg.skip_images,
              "titles": [i.title for i in items], "labels": [i.label for i in items],
              "processor": json.loads(lm.processor.to_json_string())}
    return capture_images_to_store(
        lm.model, lambda start, stop: pixel_values(items[start:stop], lm.processor), len(items),
        hookpoints, cfg.out, model_name=lm.name, source=source, rows=cfg.image_rows,
        norm_factor=cfg.norm_factor, batch_images=cfg.batch_contexts, shard_rows=cfg.shard_rows,
        dtype=cfg.dtype, overwrite=cfg.overwrite, progress=cfg.progress)


def _text_ran_out(store, cfg: CaptureConfig, got: int):
    """Warn that `cfg.dataset` ran out at `got` tokens and note it in the store's manifest."""
    from saelab.store import ActivationStore

    asked = cfg.n_tokens // cfg.context_len * cfg.context_len
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return store  # rank 0 notes it in the manifest
    log.warning("the text of %s ran out: captured %s tokens of the %s asked for (after skipping "
                "%s)", cfg.dataset, f"{got:,}", f"{asked:,}", f"{cfg.skip_tokens:,}")
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest.update(requested_tokens=asked, captured_tokens=got)
    write_json(store.path / "manifest.json", manifest)
    return ActivationStore(store.path)


# --- evaluation and dashboard ---------------------------------------------------------------------
@dataclass
class EvalOptions:
    """How a dictionary is evaluated (what `saelab eval` and the demo share)."""

    metrics: list[str] | None = option(None, "Metric families (default: those `saelab.evaluate` "
                                             "runs by default).", choices=_families)
    splice_tokens: int = option(8192, "Tokens for the spliced next-token loss (0 skips it; needs "
                                      "the model).")


@dataclass(kw_only=True)
class EvalConfig(EvalOptions):
    """Evaluate a dictionary on an activation store."""

    sae: str | None = option(None, "Dictionary folder (required unless --compare).",
                             positional=True)
    store: str | None = option(None, "Activation store (held-out data; required unless "
                                     "--compare).", positional=True)
    hookpoint: str | None = option(None, "Store hookpoint (default: the dictionary's).")
    target_hookpoint: str | None = option(None, "Transcoders: the hookpoint they predict, "
                                                "compared with and spliced (default: the one "
                                                "they were trained on).")
    allow_hookpoint_mismatch: bool = option(False, "Evaluate even where the store lacks the "
                                                   "dictionary's hookpoint.")
    allow_incomplete_store: bool = option(False, "Evaluate even on a store whose capture has "
                                                 "not finished.")
    other: str | None = option(None, "A second dictionary (folder or hf:// address) for the "
                                     "families that compare two (similarity).")
    model: str | None = option(None, "Model the families that run one use (splice, probing): "
                                     "packaged alias, folder or Hub name (default: the one the "
                                     "store was captured from).")
    labels: str | None = option(None, "Labelled texts for the families that probe concepts "
                                      "(sparse_probing, tpp, fms, separability; hallucination's AUROC): a .jsonl or .csv file with "
                                      "\"text\" and \"label\", or 'wikipedia-topics' (the "
                                      "default when such a family is asked for).")
    seed: int = option(0, "Seed of the evaluation's random draws (row samples, splits, "
                          "feature choices): the same seed gives the same report.")
    out: str | None = option(None, "Report folder (default: beside the dictionary, eval/).")
    compare: list[str] | None = option(None, "Instead of evaluating: print the figures of these "
                                             "reports (report.json files or their folders) side "
                                             "by side, and write them as OUT/compare.html "
                                             "(default: beside the first report).")

    @staticmethod
    def help_details() -> str:
        """What `saelab eval --help` adds to its description: every registered metric family."""
        from saelab.evaluate import families_help

        return families_help()


def _wants_model(metrics: list[str] | None) -> bool:
    """Whether the families asked for (the defaults when None) include one that runs the model,
    so that `saelab eval --metrics similarity` does not load a model it will not use."""
    from saelab.evaluate import family

    return metrics is None or any("model" in family(name).needs for name in metrics)


def _labels(cfg: EvalConfig):
    """The labelled texts (saelab.data.labelled.LabelledTexts): --labels when given (families
    may use labels without needing them, e.g. hallucination's AUROC), else the packaged
    Wikipedia topics when a requested family needs labels; None otherwise. Read before the
    model is loaded, so that a bad file is refused first."""
    from saelab.evaluate import family

    needed = cfg.metrics is not None and any("labels" in family(n).needs for n in cfg.metrics)
    if cfg.labels is None and not needed:
        return None
    from saelab.data.labelled import WIKIPEDIA_TOPICS, load_labelled

    return load_labelled(cfg.labels or WIKIPEDIA_TOPICS)


def evaluate_step(cfg: EvalConfig) -> tuple[dict, Path]:
    """Evaluate `cfg.sae` on `cfg.store` (refused, before any work, when the store lacks the
    dictionary's hookpoint, unless allowed); returns the report and its folder."""
    import saelab
    from saelab.capture.exclude import Exclusion
    from saelab.evaluate import check_hookpoint
    from saelab.store import ActivationStore

    if cfg.sae is None or cfg.store is None:
        raise ConfigError("saelab eval needs a dictionary and a store: saelab eval SAE STORE "
                          "(or saelab eval --compare REPORT REPORT ... to compare reports)")
    sae = saelab.load(cfg.sae)
    store = ActivationStore(cfg.store)
    hookpoint = check_hookpoint(sae, store.hookpoints, cfg.hookpoint,
                                allow_mismatch=cfg.allow_hookpoint_mismatch)
    kwargs: dict = {"other": saelab.load(cfg.other)} if cfg.other else {}
    target = cfg.target_hookpoint or sae.provenance.get("data_target_hookpoint")
    if "target" in sae.needs and target:  # a transcoder: compared with and spliced at its target
        kwargs["target_hookpoint"] = store.hookpoint(target)
    labels = _labels(cfg)
    if (cfg.splice_tokens > 0 or labels is not None) and _wants_model(cfg.metrics):
        from saelab.models import load

        lm = load(cfg.model or store.model)
        if lm.kind == "causal_lm":
            kwargs.update(model=lm.model,
                          exclusion=Exclusion.from_json(store.manifest.get("exclusion")))
            if cfg.splice_tokens > 0:
                n = max(1, cfg.splice_tokens // store.manifest["context_len"])
                kwargs["tokens"] = store.contexts()["tokens"][:n]
            if labels is not None and lm.tokenizer is not None:
                labels = labels.tokenize(lm.tokenizer)
    if labels is not None:
        kwargs["labels"] = labels
    out = Path(cfg.out or Path(cfg.sae).parent / "eval")
    report = saelab.evaluate(sae, store, metrics=cfg.metrics, hookpoint=hookpoint,
                             allow_hookpoint_mismatch=cfg.allow_hookpoint_mismatch,
                             allow_incomplete_store=cfg.allow_incomplete_store, out=out,
                             progress=True, seed=cfg.seed, **kwargs)
    return report, out


@dataclass
class DashboardOptions:
    """What the dashboard shows (what `saelab dashboard` and the demo share)."""

    n_features: int = option(200, "Features shown.")
    n_top: int = option(20, "Top-activating examples kept per feature.")


@dataclass(kw_only=True)
class DashboardConfig(DashboardOptions):
    """Build a dictionary's dashboard: static pages and the data `saelab view` serves."""

    sae: str = required("Dictionary folder.", positional=True)
    store: str = required("Activation store whose contexts are shown.", positional=True)
    out: str = option("dashboard", "Output folder.")
    model: str | None = option(None, "Model, for the tokens each decoder direction promotes "
                                     "(the logit lens).")
    hookpoint: str | None = option(None, "Store hookpoint (default: the dictionary's).")
    allow_hookpoint_mismatch: bool = option(False, "Build it even where the store lacks the "
                                                   "dictionary's hookpoint.")
    allow_incomplete_store: bool = option(False, "Build it even on a store whose capture has "
                                                 "not finished.")


def dashboard_step(cfg: DashboardConfig) -> Path:
    """The dashboard of `cfg.sae` over `cfg.store` (refused when the store lacks the dictionary's
    hookpoint, unless allowed); returns what the dashboard writer returns (its page)."""
    import saelab
    from saelab.interpret import dashboard_from_store

    lm = None
    if cfg.model:
        from saelab.models import load

        lm = load(cfg.model)
    return dashboard_from_store(saelab.load(cfg.sae), cfg.store, cfg.out,
                                tokenizer=lm.tokenizer if lm else None,
                                unembed=lm.unembed if lm else None, hookpoint=cfg.hookpoint,
                                allow_hookpoint_mismatch=cfg.allow_hookpoint_mismatch,
                                allow_incomplete_store=cfg.allow_incomplete_store,
                                n_features=cfg.n_features, n_top=cfg.n_top,
                                dictionary_path=cfg.sae)


# --- the demo -------------------------------------------------------------------------------------
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
