"""The evaluation and dashboard steps (`saelab eval`, `saelab dashboard`): a config dataclass
and a function each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saelab.config import option, required
from saelab.errors import ConfigError


def _families() -> list[str]:
    from saelab.evaluate import families

    return families()


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
