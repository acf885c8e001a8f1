"""`saelab explain`: explain and score many features of a dictionary over an activation store,
one JSON line per feature in OUT/explanations.jsonl.

The results file is the run's state. Each feature's line is appended and fsynced before the next
feature starts, so a crash loses at most the feature in progress; a rerun reads the file, skips
the features it holds, and goes on. A last line torn by a kill mid-write is cut off (the feature
is redone), so the file never holds a feature twice. The folder is locked while a run writes it.

Each line: `feature`, `explanation` (None when the feature never fired in the store), `scores`
{scorer: value, None where it could not be computed}, `explainer` (the model), `examples_used`
{explain, test, negatives: counts}, `fire_count`, `max_activation`, `seconds`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from saelab._paths import folder_lock
from saelab.config import check, option, required
from saelab.errors import ConfigError
from saelab.interpret.explain.clients import Client, make_client
from saelab.interpret.explain.examples import FeatureExamples, Sampling, Text, examples_for
from saelab.interpret.explain.explainer import explain
from saelab.interpret.explain.scorers import SCORERS, Resources, build
from saelab.interpret.hookpoint import check_hookpoint

log = logging.getLogger(__name__)

RESULTS = "explanations.jsonl"
"""Name of the results file in the output folder."""


def _scorer_names() -> list[str]:
    return list(SCORERS)


@dataclass(kw_only=True)
class ExplainConfig:
    """Explain a dictionary's features with a language model and score the explanations."""

    sae: str = required("Dictionary folder (any format saelab reads).", positional=True)
    store: str = required("Activation store whose contexts are read.", positional=True)
    features: str = option("0:100", "Features to explain: START:STOP, or indices separated by "
                                    "commas (3,17,40).")
    scorers: list[str] = option(["detection", "embedding"], "Scorers to run (detection, "
                                "fuzzing, embedding, surprisal, intervention).",
                                choices=_scorer_names)
    explainer_url: str | None = option(None, "Base URL of an OpenAI-compatible server (e.g. "
                                             "http://127.0.0.1:8000/v1); default "
                                             "$SAELAB_EXPLAINER_URL. Its key: "
                                             "$SAELAB_EXPLAINER_KEY or $OPENAI_API_KEY.")
    explainer_model: str | None = option(None, "Model name the server serves.")
    explainer_local: str | None = option(None, "A causal LM run in this process instead "
                                               "(packaged alias, folder or Hub name, e.g. "
                                               "smollm2-135m).")
    scoring_model: str | None = option(None, "Local causal LM read by surprisal and "
                                             "intervention (default: the local explainer, else "
                                             "smollm2-135m).")
    negatives: Literal["random", "hard"] = option("random", "Negatives: random contexts, or "
                                                            "hard ones where the nearest "
                                                            "features (decoder cosine) fire.")
    window: int = option(32, "Tokens per context shown.")
    n_top: int = option(10, "Top-activating contexts the explainer reads.")
    n_test: int = option(2, "Held-out activating contexts per activation quantile (5 "
                            "quantiles) for the scorers.")
    n_negatives: int = option(10, "Negative contexts for the scorers.")
    timeout: float = option(60.0, "Seconds to wait for one HTTP answer.")
    max_retries: int = option(4, "Retries of a failed HTTP request (backoff 1, 2, 4, ... s).")
    hookpoint: str | None = option(None, "Store hookpoint (default: the dictionary's).")
    allow_hookpoint_mismatch: bool = option(False, "Read a store hookpoint other than the "
                                                   "dictionary's.")
    allow_incomplete_store: bool = option(False, "Read a store whose capture has not finished.")
    out: str | None = option(None, "Output folder (default: beside the dictionary, explain/).")
    seed: int = option(0, "Seed of the context draws and the scorers' shuffles.")
    progress: bool = option(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        check(self.window >= 4, "window", "must be at least 4 tokens")
        check(self.n_top >= 1, "n_top", "must be at least 1")
        check(self.n_test >= 1 and self.n_negatives >= 1, "n_test", "n_test and n_negatives "
              "must be at least 1")
        parse_features(self.features, None)  # refuse a malformed range before any work

    def sampling(self) -> Sampling:
        """The context draws these options ask for."""
        return Sampling(window=self.window, n_top=self.n_top, n_test_per_quantile=self.n_test,
                        n_negatives=self.n_negatives, negatives=self.negatives, seed=self.seed)


def parse_features(spec: str, n_latents: int | None) -> list[int]:
    """`START:STOP` (STOP capped at `n_latents`) or `i,j,k` as a list of indices."""
    try:
        if ":" in spec:
            start, stop = (int(p) if p.strip() else None for p in spec.split(":"))
            start = start or 0
            stop = stop if stop is not None else n_latents
            if stop is None:
                return []
            stop = min(stop, n_latents) if n_latents is not None else stop
            values = list(range(start, stop))
        else:
            values = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"features: expected START:STOP or indices like 3,17,40; got "
                          f"{spec!r}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"features: indices must be >= 0; got {spec!r}")
    if n_latents is not None and any(v >= n_latents for v in values):
        raise ConfigError(f"features: the dictionary has {n_latents} latents; got {spec!r}")
    return values


# --- the results file ------------------------------------------------------------------------
def read_results(path: str | os.PathLike, repair: bool = False) -> dict[int, dict]:
    """The records in a results file, by feature (the last one wins). A torn last line (no
    newline: a write a kill interrupted) is ignored, and cut from the file when `repair`."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: ignoring a torn last line (%d bytes)", path, len(data) - end)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
    records: dict[int, dict] = {}
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[int(record["feature"])] = record
        except (ValueError, KeyError, TypeError):
            log.warning("%s: line %d is not a result record; skipped", path, n)
    return records


def append_result(path: str | os.PathLike, record: dict) -> None:
    """Append `record` as one line and make it durable (fsync) before returning."""
    line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _finite(value: float) -> float | None:
    """A score as written: None when not finite, else rounded to 4 decimals."""
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


# --- one feature -------------------------------------------------------------------------------
def explain_feature(client: Client, scorers: list, examples: FeatureExamples) -> dict:
    """The record of one feature: its explanation and every scorer's value."""
    start = time.perf_counter()
    used = {"explain": len(examples.explain), "test": len(examples.test),
            "negatives": len(examples.negatives)}
    record: dict[str, Any] = {"feature": examples.feature, "explanation": None, "scores": {},
                              "explainer": client.name, "examples_used": used,
                              "fire_count": examples.fire_count,
                              "max_activation": examples.max_activation}
    if examples.fire_count:
        text = explain(client, examples.explain).text
        record["explanation"] = text
        record["scores"] = {s.name: _finite(s.score(text, examples)) for s in scorers}
    else:
        record["scores"] = {s.name: None for s in scorers}
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


# --- the run -------------------------------------------------------------------------------------
def run_explain(dictionary, cfg: ExplainConfig, client: Client | None = None,
                resources: Resources | None = None) -> list[dict]:
    """Explain and score `cfg.features` of `dictionary` (loaded by the caller from `cfg.sae`)
    over `cfg.store`, appending to OUT/explanations.jsonl; returns the records of the features
    asked for (those done before included). `client` and `resources` replace the ones the
    options name (for tests and notebooks)."""
    from saelab.store import ActivationStore

    out = Path(cfg.out) if cfg.out else Path(cfg.sae).parent / "explain"
    features = parse_features(cfg.features, dictionary.n_latents)
    store = ActivationStore(cfg.store)
    store.require_complete(cfg.allow_incomplete_store, "explanations")
    key = check_hookpoint(dictionary, store.hookpoints, cfg.hookpoint,
                          cfg.allow_hookpoint_mismatch)
    with folder_lock(out, "saelab explain"):
        path = out / RESULTS
        done = read_results(path, repair=True)
        _warn_missing_scorers(done, features, cfg.scorers)
        todo = [f for f in features if f not in done]
        if todo:
            client = client or make_client(cfg.explainer_url, cfg.explainer_model,
                                            cfg.explainer_local, timeout=cfg.timeout,
                                            max_retries=cfg.max_retries)
            resources = resources or _resources(cfg, client, store, key, dictionary)
            scorers = build(cfg.scorers, resources)
            for examples in _examples(dictionary, store, key, todo, cfg):
                record = explain_feature(client, scorers, examples)
                append_result(path, record)
                done[examples.feature] = record
    return [done[f] for f in features if f in done]


def _examples(dictionary, store, key: str, todo: list[int], cfg: ExplainConfig):
    """Each feature's examples, with a progress bar over the features."""
    from saelab.models import load_tokenizer

    rows = store.row_index()
    text = Text(store.contexts()["tokens"], rows["ctx"], rows["pos"], load_tokenizer(store.model))
    log.info("reading %d rows of %s for %d features", store.n_rows, key, len(todo))
    all_examples = examples_for(dictionary, store.iter_rows(key), text, todo, cfg.sampling())
    yield from tqdm(all_examples, disable=not cfg.progress, desc="explain", unit="feature")


def _resources(cfg: ExplainConfig, client: Client, store, key: str, dictionary) -> Resources:
    """What the scorers asked for need: the explainer as judge, local LMs where named."""
    from saelab.interpret.explain.clients import LocalClient

    resources = Resources(judge=client, seed=cfg.seed)
    wants_lm = {"surprisal", "intervention"} & set(cfg.scorers)
    if wants_lm:
        if cfg.scoring_model:
            resources.scoring_lm = LocalClient.load(cfg.scoring_model)
        elif isinstance(client, LocalClient):
            resources.scoring_lm = client
    if "intervention" in cfg.scorers:
        same = isinstance(client, LocalClient) and client.name == store.model
        subject = client if same else LocalClient.load(store.model)
        resources.subject = (subject.model, subject.tokenizer, key, dictionary)
    return resources


def _warn_missing_scorers(done: dict[int, dict], features: list[int], scorers: list[str]) -> None:
    lacking = sorted({s for f in features if f in done for s in scorers
                      if s not in done[f].get("scores", {})})
    if lacking:
        log.warning("features already explained are kept as they are: some lack the scorers "
                    "%s (choose another --out to score them all)", ", ".join(lacking))


# --- the summary ---------------------------------------------------------------------------------
def summarise(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per scorer: features scored, mean, median, min, max (None values left out)."""
    names = list(dict.fromkeys(n for r in records for n in r.get("scores", {})))
    out = {}
    for name in names:
        values = [r["scores"][name] for r in records if r["scores"].get(name) is not None]
        out[name] = {"n": len(values),
                     "mean": statistics.fmean(values) if values else math.nan,
                     "median": statistics.median(values) if values else math.nan,
                     "min": min(values, default=math.nan), "max": max(values, default=math.nan)}
    return out


def format_summary(records: list[dict]) -> str:
    """The summary as a table, after the count of features explained."""
    explained = sum(r.get("explanation") is not None for r in records)
    lines = [f"{len(records)} features, {explained} explained "
             f"({len(records) - explained} never fired in the store)", "",
             f"{'scorer':<14}{'n':>5}{'mean':>9}{'median':>9}{'min':>9}{'max':>9}"]
    for name, s in summarise(records).items():
        lines.append(f"{name:<14}{s['n']:>5}{s['mean']:>9.3f}{s['median']:>9.3f}"
                     f"{s['min']:>9.3f}{s['max']:>9.3f}")
    return "\n".join(lines)
