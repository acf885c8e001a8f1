"""G-SAE ("Measuring and Guiding Monosemanticity", 2025): guided latents detect their labelled
concepts better than any latent of a TopK SAE trained on the same activations, read through
the code that `encode` returns (what dashboards and steering use).

Planted data: 3 of 128 unit atoms per row in d=64; concept c = "any atom of group c (4 atoms)
is active", a topic spread over several directions. Detection is the ROC AUC of one latent on
held-out rows, per concept, averaged: `code_auc` reads the codes (the guided latent's own code;
the TopK SAE's best latent per concept, chosen on the held-out rows themselves, which favours
TopK); `score_auc` reads the scores before the sparsity (the guided logit, TopK pre-activations).

Wikipedia (`--real` through bench/seed_methods.py, or `python bench/claims_guided.py
--wikipedia`): SmolLM2-135M residual stream after block 15 on the packaged Wikipedia summaries,
concept = the article's topic (11 topics; "Uncategorized" articles are left out), every token
labelled with its article's topic. Articles are split per topic into train and held-out ones
and shuffled, so that a context mixes topics. Rows follow the capture's exclusion rule (special
tokens and rows above 5x the median norm are left out). Per topic: the AUC of the guided latent's
code on held-out tokens vs the TopK latent whose code had the best AUC on the training tokens
(evaluated on held-out tokens; `topk_oracle` is the best on held-out, an upper bound;
`topk_pre` reads the TopK pre-activation instead of the code, latent chosen on train), same k and
the same number of unguided latents; the guided code's recall and false-positive rate (code > 0);
FVU and L0 of both on held-out tokens.

Two forms of the guided SAE are trained side by side (FORMS): the authors' release (the default
of `guided`: guided latents inside the one TopK, sigmoid codes, plain BCE) and saelab's earlier
form (guided latents as ReLU codes outside the TopK, class-balanced BCE). `--json PATH` merges
the rows, with the date and the load seen, into a results file.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path

import torch

import saelab
from saelab.dictionaries.guided import detection_auc, store_row_labels
from saelab.train import Labelled

log = logging.getLogger(__name__)

D, N_ATOMS, GROUP = 64, 128, 4
FORMS = {  # label -> fields of `guided`
    "authors' (in TopK, sigmoid, plain BCE)": {},
    "saelab's (outside TopK, ReLU, balanced BCE)": {"placement": "outside", "postact": "relu",
                                                    "guide_balance": True},
}


def _planted(n: int, n_concepts: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(N_ATOMS, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(N_ATOMS, generator=g)[:3] for _ in range(n)])
    codes = torch.zeros(n, N_ATOMS).scatter_(1, idx, torch.rand(n, 3, generator=g) + 0.5)
    labels = torch.stack([(codes[:, GROUP * c:GROUP * (c + 1)] > 0).any(1)
                          for c in range(n_concepts)], 1).float()
    return codes @ atoms, labels


def guided_detection(args) -> list[dict]:
    n, steps, n_concepts, n_latents, k = ((8000, 600, 4, 64, 4) if args.quick
                                          else (40000, 3000, 8, 256, 4))
    x, y = _planted(n, n_concepts, args.seed)
    cut = n * 3 // 4
    cfg = saelab.TrainConfig(steps=steps, batch_size=256, lr=4e-3, progress=False, seed=args.seed)
    saes = []
    for form, fields in FORMS.items():
        torch.manual_seed(args.seed)
        saes.append((f"guided {form}", saelab.fit(saelab.create(
            "guided", d_in=D, n_latents=n_latents, k=k, n_guided=n_concepts, **fields),
            Labelled(x[:cut], y[:cut]), cfg)))
    torch.manual_seed(args.seed)
    topk = saelab.fit(saelab.create("topk", d_in=D, n_latents=n_latents, k=k), x[:cut], cfg)
    xt, yt = x[cut:], y[cut:]
    rows = []
    with torch.no_grad():
        for name, sae in saes + [("topk", topk)]:
            z = sae.encode(xt)
            fvu = float((sae.decode(z) - xt).pow(2).sum() / (xt - xt.mean(0)).pow(2).sum())
            l0 = float((z != 0).sum(1).float().mean())
            if name != "topk":
                s = sae.concept_scores(xt)
                score = [detection_auc(s[:, c:c + 1], yt[:, c]).item() for c in range(n_concepts)]
                code = [detection_auc(z[:, c:c + 1], yt[:, c]).item() for c in range(n_concepts)]
            else:
                pre = sae.pre_activations(xt)
                score = [detection_auc(pre, yt[:, c]).max().item() for c in range(n_concepts)]
                code = [detection_auc(z, yt[:, c]).max().item() for c in range(n_concepts)]
            rows.append({"data": "planted", "method": f"{name} k={k}", "seed": args.seed,
                         "l0": round(l0, 2), "fvu": round(fvu, 4),
                         "score_auc": round(sum(score) / n_concepts, 3),
                         "code_auc": round(sum(code) / n_concepts, 3),
                         "which": "best of all latents, per concept" if name == "topk"
                         else "its own guided latent"})
    t = rows[-1]
    for g in rows[:-1]:
        holds = g["code_auc"] > t["code_auc"] + 0.05
        g["verdict"] = ("holds" if holds else "does not hold") + (
            f": guided code AUC {g['code_auc']} vs best TopK latent's code {t['code_auc']}")
    t["verdict"] = "baseline"
    if args.real:
        rows += wikipedia_rows(args)
    return rows


# --- SmolLM2 on the Wikipedia topics -----------------------------------------------------------

def _split_articles(per_topic_train: int, per_topic_eval: int, seed: int):
    """(train docs, held-out docs, topics): per topic, a seeded choice of articles; each list
    shuffled so that neighbouring articles in a context have random topics."""
    from saelab.data import read_documents

    by_topic: dict[str, list] = {}
    for doc in read_documents("wikipedia"):
        if doc.label and doc.label != "Uncategorized":
            by_topic.setdefault(doc.label, []).append(doc)
    rng = random.Random(seed)
    train, held = [], []
    for topic in sorted(by_topic):
        docs = by_topic[topic][:]
        rng.shuffle(docs)
        train += docs[:per_topic_train]
        held += docs[per_topic_train:per_topic_train + per_topic_eval]
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held, sorted(by_topic)


def _capture(lm, docs, hookpoint: str, out: Path, topics: list[str]):
    """Activations [N, d] and per-token topic labels [N, n_topics] of `docs` (cached in `out`)."""
    from saelab.data import pack
    from saelab.store import capture_to_store

    corpus = pack(docs, lm.tokenizer, context_len=128)
    store = capture_to_store(lm.model, corpus.tokens, [hookpoint], out, model_name=lm.name,
                             doc_ids=corpus.doc_ids, special_ids=corpus.special_ids,
                             progress=False)
    x = torch.cat([a for a, _ in store.iter_rows(hookpoint, 8192)]).float()
    labels, _ = store_row_labels(store, [d.label for d in docs], topics)
    return x, labels, store.manifest.get("excluded_rows")


def _fvu_l0(sae, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    with torch.no_grad():
        z = sae.encode(x)
        err = (sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return float(err), float((z != 0).sum(1).float().mean()), z


def wikipedia_rows(args) -> list[dict]:
    from saelab._paths import cache_dir
    from saelab.models import load

    n_train, n_eval, latents, epochs = (25, 10, 1152, 3) if args.quick else (100, 30, 2304, 4)
    k, layer, t0 = 32, getattr(args, "layer", 15), time.time()
    train_docs, held_docs, topics = _split_articles(n_train, n_eval, args.seed)
    lm = load("smollm2-135m")
    hp = lm.layer_template.format(layer)
    root = cache_dir() / "bench_guided" / f"L{layer}_{n_train}x{n_eval}_s{args.seed}"
    x, y, excl = _capture(lm, train_docs, hp, root / "train", topics)
    h, yh, excl_h = _capture(lm, held_docs, hp, root / "eval", topics)
    log.info("captured %d train / %d held-out tokens in %.0f s (excluded %s / %s)",
             len(x), len(h), time.time() - t0, excl, excl_h)
    c = len(topics)
    cfg = saelab.TrainConfig(epochs=epochs, batch_size=1024, lr=2e-3, seed=args.seed,
                             progress=False, dead_after_tokens=min(2_000_000, len(x)))
    torch.manual_seed(args.seed)
    topk = saelab.fit(saelab.create("topk", d_in=lm.d_model, n_latents=latents, k=k), x, cfg)
    t_fvu, t_l0, t_z = _fvu_l0(topk, h)
    with torch.no_grad():
        chosen = detection_auc(topk.encode(x), y).argmax(1)  # best latent per topic, on train
        pre_chosen = detection_auc(topk.pre_activations(x), y).argmax(1)
        t_pre = detection_auc(topk.pre_activations(h), yh).gather(1, pre_chosen[:, None])[:, 0]
    t_all = detection_auc(t_z, yh)  # [c, latents] on held-out
    t_chosen = t_all.gather(1, chosen[:, None])[:, 0]
    t_oracle = t_all.max(1).values
    data = f"smollm2 L{layer} wikipedia"
    rows = []
    for form, fields in FORMS.items():
        torch.manual_seed(args.seed)
        guided = saelab.fit(saelab.create("guided", d_in=lm.d_model, n_latents=latents + c, k=k,
                                          n_guided=c, **fields), Labelled(x, y), cfg)
        rows += _wikipedia_form_rows(form, guided, h, yh, topics, t_chosen, data, k, y, args,
                                     time.time() - t0)
    mean = {name: round(float(v.mean()), 3) for name, v in
            (("topk_chosen", t_chosen), ("topk_oracle", t_oracle), ("topk_pre", t_pre))}
    rows.append({"data": data, "method": f"topk k={k}", "seed": args.seed, "l0": round(t_l0, 2),
                 "fvu": round(t_fvu, 4), "train_tokens": len(x), "held_tokens": len(h),
                 "topk_chosen": mean["topk_chosen"], "topk_oracle": mean["topk_oracle"],
                 "topk_pre": mean["topk_pre"], "seconds": round(time.time() - t0, 1),
                 "verdict": "baseline"})
    return rows


def _wikipedia_form_rows(form, guided, h, yh, topics, t_chosen, data, k, y, args,
                         seconds) -> list[dict]:
    """Per-topic rows and a summary row of one guided form against the chosen TopK latents."""
    c = len(topics)
    g_fvu, g_l0, g_z = _fvu_l0(guided, h)
    with torch.no_grad():
        g_code = detection_auc(g_z[:, :c], yh).diagonal()
        g_logit = detection_auc(guided.guided_logits(h), yh).diagonal()
    fired, present = g_z[:, :c] > 0, yh > 0.5
    recall = (fired & present).sum(0) / present.sum(0)
    fpr = (fired & ~present).sum(0) / (~present).sum(0)
    rows = []
    for i, topic in enumerate(topics):
        win = float(g_code[i]) > float(t_chosen[i])
        rows.append({"data": data, "method": f"topic: {topic} / {form}", "seed": args.seed,
                     "train_tokens": int(y[:, i].sum()), "held_tokens": int(yh[:, i].sum()),
                     "guided_code": round(float(g_code[i]), 3),
                     "guided_logit": round(float(g_logit[i]), 3),
                     "topk_chosen": round(float(t_chosen[i]), 3),
                     "g_recall": round(float(recall[i]), 3), "g_fpr": round(float(fpr[i]), 3),
                     "verdict": "guided higher" if win else "topk higher or equal"})
    wins = sum(r["verdict"] == "guided higher" for r in rows)
    mean = {name: round(float(v.mean()), 3) for name, v in
            (("guided_code", g_code), ("guided_logit", g_logit), ("topk_chosen", t_chosen),
             ("g_recall", recall), ("g_fpr", fpr))}
    rows.append({"data": data, "method": f"guided {form} k={k} +{c} guided", "seed": args.seed,
                 "l0": round(g_l0, 2), "fvu": round(g_fvu, 4), "held_tokens": len(h),
                 "guided_code": mean["guided_code"], "guided_logit": mean["guided_logit"],
                 "g_recall": mean["g_recall"], "g_fpr": mean["g_fpr"],
                 "seconds": round(seconds, 1),
                 "verdict": ("holds" if wins == c else "does not hold") +
                 f": guided code AUC above the chosen TopK latent on {wins}/{c} topics, mean "
                 f"{mean['guided_code']} vs {mean['topk_chosen']}"})
    return rows


CLAIMS = {"guided_detection": guided_detection}


def main() -> None:
    p = argparse.ArgumentParser(description="G-SAE on planted data or on the Wikipedia topics")
    p.add_argument("--wikipedia", action="store_true", help="SmolLM2 on the Wikipedia topics")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--json", default=None, help="merge the rows into this results file")
    args = p.parse_args()
    loadavg = os.getloadavg()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from seed_methods import table

    args.real = False
    t = time.time()
    rows = wikipedia_rows(args) if args.wikipedia else guided_detection(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'quick' if args.quick else 'full'}, seed {args.seed}, {time.time() - t:.0f} s")
    print(table(rows))
    if args.json:
        _merge(Path(args.json), rows, loadavg, args)


def _merge(path: Path, rows: list[dict], loadavg, args) -> None:
    """Merge `rows` into the results file at `path` (rows of the same data, method and seed
    replaced), with the date and the load seen at the start."""
    from results_records import merge_records

    merge_records(path, rows, ("data", "method", "seed"), {
        "title": "Guided SAE, the authors' form and saelab's, against TopK",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/claims_guided.py [--wikipedia] "
                   f"[--quick] --seed S --json {path}",
        "notes": "Held-out ROC AUC of one latent per concept: the guided latent's own code (and "
                 "logit) against the TopK latent chosen on the training tokens (planted: the "
                 "best TopK latent on the held-out rows). Wikipedia --quick: 25 training and 10 "
                 "held-out articles per topic, 1,152 unguided latents, k 32, 3 epochs; full: "
                 "100 / 30, 2,304 latents, 4 epochs."}, loadavg)


if __name__ == "__main__":
    main()
