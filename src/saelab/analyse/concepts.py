"""The `saelab correlate` and `saelab cluster` commands: their configs and steps (the CLI in
`saelab.cli` only parses and prints).

    saelab correlate runs/l15/sae bible --limit 500             # latents that go together
    saelab cluster runs/l15/sae wikipedia --limit 400 --features 12,40,77 --clusters 5

Both embed the corpus as `saelab embed` does (reusing saved embeddings), then call
`saelab.analyse.cooccurrences` (concept correlations: NPMI, the count expected under
independence, a hypergeometric test corrected for every pair) or `saelab.analyse.cluster`
(k-means along chosen latents), after Jiang et al. 2025, "Interpretable Embeddings with Sparse
Autoencoders: A Data Analysis Toolkit" (reference: github.com/nickjiang2378/interp_embed). A
latent is shown by its explanation when a `saelab explain` results file is given, and by the
context where it fires most in the corpus. Clusters are scored against the documents' labels
when they have them (adjusted Rand index; `--compare-dense` adds k-means on MiniLM sentence
embeddings of the same documents, the baseline the paper compares with).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saelab.analyse.correlate import (MIN_TOGETHER, Cooccurrences, cooccurrences,
                                      format_cooccurrences)
from saelab.analyse.corpora import check_spec
from saelab.analyse.embeddings import Embeddings, is_embeddings
from saelab.analyse.select import cluster, latents_for_labels
from saelab.analyse.session import OnCorpus, Session, options_of
from saelab.analyse.stats import Correction
from saelab.config import option
from saelab.errors import ConfigError, DataError


@dataclass(kw_only=True)
class CorrelateConfig(OnCorpus):
    """Find pairs of latents that fire in the same documents more often than chance."""

    top: int = option(20, "Pairs shown (highest NPMI among the significant ones).")
    latents: list[int] | None = option(None, "Only pairs with one of these latents.")
    min_together: int = option(MIN_TOGETHER, "Pairs seen together in fewer documents are not "
                                             "tested.")
    max_frequency: float = option(0.5, "Latents firing in more than this share of documents "
                                       "are left out.")
    alpha: float = option(0.05, "Significance level after the correction.")
    correction: Correction = option("bh", "Multiple-comparison correction: bh, by, bonferroni.")
    keep_split: bool = option(False, "Keep pairs that peak on the same token in most shared "
                                     "documents (one concept split over two latents).")
    explanations: str | None = option(None, "A `saelab explain` explanations.jsonl whose "
                                            "explanations label the latents.")
    out: str | None = option(None, "Write the result (pairs with contexts) as JSON here.")


@dataclass(kw_only=True)
class ClusterConfig(OnCorpus):
    """Cluster a corpus's documents along chosen latents (filter the embedding, then k-means)."""

    features: list[int] | None = option(None, "Latents to cluster along (default: "
                                              "--per-label latents of each document label).")
    per_label: int = option(5, "Without --features: latents taken per document label (those "
                               "whose frequency differs most between the label and the rest).")
    clusters: int = option(8, "Number of clusters (k-means, 10 starts).")
    cluster_seed: int = option(0, "Seed of k-means.")
    examples: int = option(3, "Document titles shown per cluster.")
    compare_dense: bool = option(False, "Also cluster MiniLM sentence embeddings of the same "
                                        "documents and score both against the labels.")
    explanations: str | None = option(None, "A `saelab explain` explanations.jsonl whose "
                                            "explanations label the latents.")
    out: str | None = option(None, "Write the result as JSON here.")


def _embeddings(cfg) -> Embeddings:
    """The corpus's embeddings: read, reused or made (as `saelab embed`)."""
    if not is_embeddings(cfg.corpus):  # a typo is named before the dictionary loads
        check_spec(cfg.corpus)
    emb, _, _ = Session(cfg.dictionary, options_of(cfg)).embeddings(cfg.corpus)
    return emb


def latent_labels(path: str | None) -> dict[int, str]:
    """Explanations by latent from a `saelab explain` results file ({} without one)."""
    if path is None:
        return {}
    from saelab.interpret.explain import read_results

    if not Path(path).is_file():
        raise DataError(f"no explanations file at {path}: give the explanations.jsonl that "
                        f"`saelab explain` wrote")
    return {int(f): r["explanation"] for f, r in read_results(path).items()
            if r.get("explanation")}


def describe_latent(emb: Embeddings, latent: int, labels: dict[int, str]) -> dict:
    """A latent as shown: its explanation (if any) and its strongest context in the corpus."""
    top = emb.top_documents(latent, 1)
    return {"latent": latent, "label": labels.get(latent, ""),
            "context": emb.excerpt(top[0], latent, 40) if top else ""}


@dataclass
class CorrelateResult:
    """Significant co-occurrences with each latent's label and top context."""

    corpus: str
    """The corpus's name."""
    result: Cooccurrences
    """The pairs and the counts of the test."""
    latents: dict[int, dict] = field(default_factory=dict)
    """Each latent of a shown pair: label and context (`describe_latent`)."""

    def to_json(self) -> dict:
        r = self.result
        return {"corpus": self.corpus, "n_documents": r.n_documents, "n_latents": r.n_latents,
                "n_pairs": r.n_pairs, "n_significant": r.n_significant, "alpha": r.alpha,
                "pairs": [p._asdict() for p in r.pairs],
                "latents": {str(k): v for k, v in self.latents.items()}}


def correlate_step(cfg: CorrelateConfig) -> CorrelateResult:
    """Embed the corpus (reusing saved embeddings) and test every pair of eligible latents."""
    labels = latent_labels(cfg.explanations)
    emb = _embeddings(cfg)
    result = cooccurrences(emb, latents=cfg.latents, top=cfg.top,
                           min_together=cfg.min_together, max_frequency=cfg.max_frequency,
                           alpha=cfg.alpha, correction=cfg.correction,
                           max_same_token=None if cfg.keep_split else 0.5)
    shown = sorted({f for p in result.pairs for f in (p.latent_a, p.latent_b)})
    out = CorrelateResult(str(emb.settings.get("corpus") or cfg.corpus), result,
                          {f: describe_latent(emb, f, labels) for f in shown})
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(out.to_json(), indent=1) + "\n", encoding="utf-8")
    return out


@dataclass
class ClusterResult:
    """Documents clustered along chosen latents."""

    corpus: str
    """The corpus's name."""
    features: list[int]
    """The latents clustered along."""
    assignment: list[int]
    """Cluster of each document."""
    clusters: list[dict]
    """Per cluster: size, its strongest latents (label, context), example titles, and with
    labels its majority label and purity."""
    scores: dict[str, float] = field(default_factory=dict)
    """Adjusted Rand index against the documents' labels: "sae" and, with --compare-dense,
    "minilm" (empty when the documents have no labels)."""

    def to_json(self) -> dict:
        return {"corpus": self.corpus, "features": self.features,
                "assignment": self.assignment, "clusters": self.clusters,
                "scores": self.scores}


def cluster_step(cfg: ClusterConfig) -> ClusterResult:
    """Embed the corpus (reusing saved embeddings), filter it to the chosen latents and
    cluster it; scored against the documents' labels when every document has one."""
    labels = latent_labels(cfg.explanations)
    emb = _embeddings(cfg)
    doc_labels = [d.label for d in emb.documents]
    has_labels = all(doc_labels) and len(set(doc_labels)) > 1
    features = chosen_features(cfg, emb, doc_labels if has_labels else None)
    assignment = cluster(emb, features, cfg.clusters, seed=cfg.cluster_seed)
    described = describe_clusters(emb, features, assignment, labels, cfg.examples,
                                  doc_labels if has_labels else None)
    scores = {}
    if has_labels:
        from sklearn.metrics import adjusted_rand_score

        scores["sae"] = float(adjusted_rand_score(doc_labels, assignment))
        if cfg.compare_dense:
            scores["minilm"] = float(adjusted_rand_score(
                doc_labels, dense_clusters(emb, cfg.clusters, cfg.cluster_seed)))
    elif cfg.compare_dense:
        raise DataError("--compare-dense scores both clusterings against the documents' "
                        "labels, and this corpus has none (try wikipedia)")
    out = ClusterResult(str(emb.settings.get("corpus") or cfg.corpus), features,
                        [int(a) for a in assignment], described, scores)
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(out.to_json(), indent=1) + "\n", encoding="utf-8")
    return out


def chosen_features(cfg: ClusterConfig, emb: Embeddings, doc_labels: list | None) -> list[int]:
    """The latents to cluster along: --features, else the --per-label latents of each label."""
    if cfg.features:
        bad = [f for f in cfg.features if not 0 <= f < emb.n_latents]
        if bad:
            raise ConfigError(f"--features {bad} out of range: the dictionary has "
                              f"{emb.n_latents} latents (0 to {emb.n_latents - 1})")
        return sorted(set(cfg.features))
    if doc_labels is None:
        raise ConfigError("name the latents to cluster along with --features: this corpus has "
                          "no document labels to choose them from")
    by_label = latents_for_labels(emb, doc_labels, cfg.per_label)
    return sorted({f for fs in by_label.values() for f in fs})


def describe_clusters(emb: Embeddings, features: list[int], assignment: np.ndarray,
                      labels: dict[int, str], examples: int,
                      doc_labels: list | None) -> list[dict]:
    """Per cluster: size, the 3 chosen latents with the largest mean pooled code in it,
    example titles, and (with labels) its majority label and purity."""
    x_NL = emb.matrix()[:, features].toarray()
    out = []
    for c in range(int(assignment.max()) + 1):
        inside = np.flatnonzero(assignment == c)
        mean_L = x_NL[inside].mean(0) if len(inside) else np.zeros(len(features))
        top = [features[i] for i in np.argsort(-mean_L, kind="stable")[:3] if mean_L[i] > 0]
        row = {"cluster": c, "size": int(len(inside)),
               "latents": [describe_latent(emb, f, labels) for f in top],
               "examples": [emb.documents[i].title or emb.documents[i].text[:60]
                            for i in inside[:examples]]}
        if doc_labels is not None and len(inside):
            label, count = Counter(doc_labels[i] for i in inside).most_common(1)[0]
            row.update(label=label, purity=count / len(inside))
        out.append(row)
    return out


def dense_clusters(emb: Embeddings, n_clusters: int, seed: int) -> np.ndarray:
    """k-means on MiniLM sentence embeddings (the packaged all-MiniLM-L6-v2) of the documents."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    from saelab.interpret.explain.embedding import Encoder

    x = Encoder.load()([d.text for d in emb.documents]).numpy()
    return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(normalize(x))


def _latent(d: dict) -> str:
    label = f" [{d['label']}]" if d.get("label") else ""
    return f"{d['latent']}{label}: {d['context']}"


def format_correlation(out: CorrelateResult) -> str:
    """The pairs as a table, then each shown latent's label and strongest context."""
    lines = [f"corpus {out.corpus}", format_cooccurrences(out.result)]
    if out.latents:
        lines += ["", "latents (label, strongest context):"]
        lines += [f"  {_latent(d)}" for d in out.latents.values()]
    return "\n".join(lines)


def format_clusters(out: ClusterResult) -> str:
    """Each cluster: size, majority label and purity (with labels), strongest latents, titles;
    then the scores against the labels."""
    lines = [f"{len(out.assignment)} documents of {out.corpus} in {len(out.clusters)} clusters "
             f"along {len(out.features)} latents"]
    for c in out.clusters:
        label = f", mostly {c['label']} ({c['purity']:.0%})" if "label" in c else ""
        lines.append(f"cluster {c['cluster']}: {c['size']} documents{label}")
        lines += [f"  latent {_latent(d)}" for d in c["latents"]]
        if c["examples"]:
            lines.append(f"  e.g. {'; '.join(c['examples'])}")
    if out.scores:
        lines.append("adjusted Rand index against the documents' labels: " + ", ".join(
            f"{k} {v:.3f}" for k, v in out.scores.items()))
    return "\n".join(lines)
