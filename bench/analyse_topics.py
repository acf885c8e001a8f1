"""SAE embeddings against MiniLM dense embeddings on retrieval and clustering along a chosen
concept, scored against known labels of the packaged Wikipedia summaries.

After Jiang et al. 2025, "Interpretable Embeddings with Sparse Autoencoders: A Data Analysis
Toolkit" (property-based retrieval and clustering along chosen concepts). Documents: the
Wikipedia summaries' topics (`saelab.data.wikipedia_topics`, PER_CLASS per topic), each topic's
documents split in half: the first half (selection) picks each concept's latents
(`saelab.analyse.select.latents_for_labels`) and MiniLM's class centroids; every score is on the
second half (test), then the halves swap; `value` is the mean of the two. Two concepts:
- topic: the 11 Wikipedia topics;
- year: whether the summary mentions a year (a regex, 1000-2029), a property that cuts across
  topics.
Tasks and scores, per concept:
- retrieval: rank the test documents for each class; R-precision (precision at the class's size)
  and average precision, averaged over classes. SAE: the sum of the class's latents' scaled
  codes. MiniLM: cosine to the class centroid minus cosine to the centroid of the rest. SAE
  (all latents): the same centroid rule on the whole SAE embedding, to show what filtering adds.
- clustering: k-means with k = the number of classes on the test documents; adjusted Rand
  index against the classes. SAE: filtered to the concept's latents; MiniLM and SAE (all
  latents): unfiltered, as they cannot be filtered by concept.

    OMP_NUM_THREADS=1 .venv/bin/python bench/analyse_topics.py --sae demo_out/sae \\
        --per-class 60 --json bench/results/analyse_topics.json
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_records import merge_records  # noqa: E402

YEAR = re.compile(r"\b(1\d{3}|20[0-2]\d)\b")


def split(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the selection and test halves: each class's documents split in two."""
    sel, test = [], []
    for c in sorted(set(labels)):
        idx = [i for i, label in enumerate(labels) if label == c]
        sel += idx[:len(idx) // 2]
        test += idx[len(idx) // 2:]
    return np.array(sorted(sel)), np.array(sorted(test))


def retrieval_scores(score_of, labels: np.ndarray) -> tuple[float, float]:
    """Mean R-precision and mean average precision over the classes; `score_of(c)` gives a
    score per test document for class c."""
    from sklearn.metrics import average_precision_score

    r_prec, ap = [], []
    for c in sorted(set(labels.tolist())):
        truth = labels == c
        score = score_of(c)
        top = np.argsort(-score, kind="stable")[:truth.sum()]
        r_prec.append(truth[top].mean())
        ap.append(average_precision_score(truth, score))
    return float(np.mean(r_prec)), float(np.mean(ap))


def centroid_scores(x_sel: np.ndarray, y_sel: np.ndarray, x_test: np.ndarray):
    """score_of(c): cosine to class c's centroid minus cosine to the rest's centroid."""
    from sklearn.preprocessing import normalize

    x_sel, x_test = normalize(x_sel), normalize(x_test)

    def score_of(c):
        inside = normalize(x_sel[y_sel == c].mean(0, keepdims=True))
        rest = normalize(x_sel[y_sel != c].mean(0, keepdims=True))
        return (x_test @ inside.T - x_test @ rest.T).ravel()
    return score_of


def kmeans_ari(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import normalize

    k = len(set(labels.tolist()))
    found = KMeans(k, n_init=10, random_state=seed).fit_predict(normalize(x))
    return float(adjusted_rand_score(labels, found))


def embed(sae_path: str, texts, cache: Path, max_tokens: int):
    """SAE embeddings of the documents (saved in `cache` and reused) and MiniLM's vectors."""
    from saelab.analyse import Embeddings, Session, embed_documents
    from saelab.analyse.embed import exclusion_for
    from saelab.analyse.session import documents_digest
    from saelab.data import Document
    from saelab.interpret.explain.embedding import Encoder

    session = Session(sae_path)
    docs = [Document(t, str(i), label) for i, (t, label) in enumerate(zip(texts.texts,
                                                                       texts.labels))]
    key = documents_digest(docs)[:12]  # the same documents, or they are embedded again
    folder = cache / f"{session.fingerprint[:12]}-{key}-t{max_tokens}"
    if (folder / "embeddings.json").is_file():
        emb = Embeddings.load(folder)
    else:
        emb = embed_documents(session.dictionary, session.lm, docs, session.hookpoint,
                              max_tokens=max_tokens, progress=True,
                              exclusion=exclusion_for(session.dictionary, session.lm.tokenizer))
        emb.save(folder)
    dense = Encoder.load()(list(texts.texts)).numpy()
    return emb, dense


def run(args) -> list[dict]:
    from saelab.data import wikipedia_topics

    texts = wikipedia_topics(per_class=args.per_class, seed=0)
    start = time.time()
    emb, dense = embed(args.sae, texts, Path(args.cache), args.max_tokens)
    seconds = time.time() - start
    sae_all = emb.matrix().toarray()
    concepts = {"topic": np.array(texts.labels),
                "year": np.array(["year" if YEAR.search(t) else "no year" for t in texts.texts])}
    halves = split(texts.labels)
    rows: dict[tuple, dict] = {}
    for half in (0, 1):  # each half picks the latents once and is scored once
        sel, test = halves if half == 0 else halves[::-1]
        for concept, labels in concepts.items():
            for r in score(emb, sae_all, dense, labels, sel, test, args.per_label, concept):
                key = (r["concept"], r["task"], r["method"], r["metric"])
                rows.setdefault(key, {**r, "value": None})[f"half {half}"] = r["value"]
    rows = list(rows.values())
    for r in rows:
        r["value"] = round((r["half 0"] + r["half 1"]) / 2, 4)
    print(f"embeddings ready in {seconds:.0f} s (SAE ones cached in {args.cache})")
    return rows


def score(emb, sae_all, dense, labels, sel, test, per_label, concept) -> list[dict]:
    """Every method's retrieval and clustering scores for one concept, latents and centroids
    chosen on the documents `sel`, scored on `test`."""
    from saelab.analyse.select import concept_matrix, latents_for_labels

    y_sel, y_test = labels[sel], labels[test]
    sel_emb, test_emb = subset(emb, sel), subset(emb, test)
    chosen = latents_for_labels(sel_emb, y_sel.tolist(), per_label=per_label)
    union = sorted(set().union(*chosen.values()))

    def sae_score(c):
        return concept_matrix(test_emb, chosen[c]).sum(1)
    methods = {f"SAE, {per_label} latents per class": sae_score,
               "SAE, all latents (centroid)": centroid_scores(sae_all[sel], y_sel, sae_all[test]),
               "MiniLM (centroid)": centroid_scores(dense[sel], y_sel, dense[test])}
    rows = []
    for method, score_of in methods.items():
        r_prec, ap = retrieval_scores(score_of, y_test)
        rows.append(row(concept, "retrieval", method, "R-precision", r_prec, y_test))
        rows.append(row(concept, "retrieval", method, "mean AP", ap, y_test))
    for method, x in {"SAE, filtered to the chosen latents": concept_matrix(test_emb, union),
                      "SAE, all latents": sae_all[test], "MiniLM": dense[test]}.items():
        rows.append(row(concept, "clustering", method, "ARI", kmeans_ari(x, y_test), y_test))
    return rows


def subset(emb, index):
    from saelab.analyse import Embeddings

    m = emb.matrix()[index]
    spans = np.zeros((m.nnz, 2), np.int32)  # excerpts are not needed here
    return Embeddings(m.indptr.astype(np.int64), m.indices.astype(np.int32),
                      m.data.astype(np.float32), spans, emb.n_tokens_N[index], emb.n_latents,
                      [emb.documents[i] for i in index], emb.settings)


def row(concept, task, method, metric, value, labels) -> dict:
    classes = len(set(labels.tolist()))
    return {"concept": concept, "task": task, "method": method, "metric": metric,
            "value": round(value, 4), "classes": classes, "test_docs": len(labels)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", default="demo_out/sae")
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--per-label", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--cache", default=str(Path.home() / ".cache/saelab/bench_analyse"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    load = os.getloadavg()
    rows = run(args)
    for r in rows:
        print(f"{r['concept']:<6} {r['task']:<10} {r['method']:<38} {r['metric']:<11} "
              f"{r['value']:.3f} ({r['half 0']:.3f}, {r['half 1']:.3f})")
    if args.json:
        meta = {"title": "SAE embeddings vs MiniLM: retrieval and clustering along a chosen "
                         "concept (Wikipedia summaries)",
                "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/analyse_topics.py "
                           + " ".join(sys.argv[1:]),
                "notes": f"{args.per_class} summaries per topic, each topic split in half: "
                         f"latents and centroids chosen on one half, scores on the other, "
                         f"then swapped (half 0, half 1; value = their mean); "
                         f"SAE {args.sae} (max-pooled over the first {args.max_tokens} "
                         f"tokens); MiniLM = all-MiniLM-L6-v2 mean-pooled"}
        merge_records(args.json, rows, ("concept", "task", "method", "metric"), meta, load)


if __name__ == "__main__":
    main()
