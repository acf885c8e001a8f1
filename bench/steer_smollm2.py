"""Steering SmolLM2-135M with features of a TopK SAE on its layer-15 residual stream: does adding a
feature's decoder direction move the generated text towards what the feature stands for, and at
what fluency cost? And the tiers of "Breaking Bad Tokens" (Goyal et al. 2025) suppressing a
feature where the clean model produces it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/steer_smollm2.py --sae demo_out/sae \
        --json bench/results/steer_smollm2.json --tiers-json bench/results/steer_tiers_smollm2.json

1. Features: the SAE encodes held-out Wikipedia text (the last summaries of the packaged file,
   after the demo's training text). Among features that fire on 0.05%-2% of tokens, with their
   top contexts in at least 8 different contexts, a seeded sample of candidates is scored by
   how alike their top contexts are (mean pairwise cosine of the contexts' MiniLM embeddings,
   16-token windows ending at the strongest token), and the most coherent ones are steered with.
2. Induction: five neutral prompts are continued greedily (`--max-new-tokens` tokens) with the
   feature's code raised by 0 (clean), 0.1, 0.2, 0.4 and 0.8 times the median norm of the
   activations at the hookpoint (`saelab.steer.add`, every token, the SAE error term kept; the
   decoder rows have unit norm, so that is the size of the vector added). For each: the
   feature's mean activation on the continuation as the clean model reads it, the cosine of the
   continuation's MiniLM embedding with the mean embedding of the feature's top contexts (and
   its change from the clean continuation), and the continuation's perplexity under the clean
   model.
3. Suppression tiers: prompts are the feature's own top contexts cut just before the token
   where it fires most; each tier (`active`: subtract its largest activation where it fires;
   `every`: the same on every token; `clamp`: clamp to 0 on every token) is compared with the
   clean continuation: the feature's activation, an embedding probe (logistic regression on
   MiniLM embeddings of 24 other top contexts against 24 contexts where the feature is silent)
   and the perplexity under the clean model.

Without `--sae` (or when its folder is missing) a TopK SAE is trained first on 100k tokens
(`saelab.pipeline.capture` + `saelab.fit`, about 2 minutes here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

HOOKPOINT = "model.layers.15"
MULTIPLES = (0.0, 0.1, 0.2, 0.4, 0.8)
"""Strengths, as fractions of the median norm of the (kept) activations at the hookpoint."""
WINDOW = 16


def load_or_train(path: str | None, work: Path, lm):
    """The SAE at `path`, or a TopK trained on 100k tokens of the packaged Wikipedia text."""
    import saelab
    from saelab.pipeline import CaptureConfig, capture

    if path and Path(path).is_dir():
        return saelab.load(path), path
    store = capture(CaptureConfig(out=str(work / "store"), n_tokens=100_000,
                                  hookpoints=[HOOKPOINT], progress=False), lm=lm)
    sae = saelab.create("topk", d_in=576, n_latents=4608, k=32, seed=0)
    sae = saelab.fit(sae, store, saelab.TrainConfig(epochs=4, batch_size=1024, lr=2e-3, seed=0,
                                                    out=str(work / "train"), progress=False))
    return sae, "trained here: TopK 4,608 latents, k 32, 100k tokens, 4 epochs"


@torch.no_grad()
def read_corpus(lm, sae, n_contexts: int, context_len: int = 64):
    """Held-out contexts and, per context and feature, the largest code and where it is."""
    from saelab.capture import capture
    from saelab.capture.exclude import Exclusion
    from saelab.data import pack, wikipedia_summaries

    docs = wikipedia_summaries()[-1500:]
    corpus = pack(docs, lm.tokenizer, context_len, max_contexts=n_contexts)
    rule = Exclusion.from_json(sae.provenance.get("data_exclusion"))
    rule.special_ids = sorted(set(rule.special_ids) | set(corpus.special_ids))
    best, where, fires, norms = [], [], torch.zeros(sae.n_latents), []
    kept = 0
    for batch in corpus.tokens.split(16):
        act = capture(lm.model, [HOOKPOINT], batch)[HOOKPOINT]  # [B, T, d]
        keep = rule.keep_mask(batch, {HOOKPOINT: act})  # [B, T]
        codes = sae.encode(act.flatten(0, 1)).view(*act.shape[:2], -1) * keep[..., None]
        fires += (codes > 0).sum((0, 1)).float()
        kept += int(keep.sum())
        norms.append(act[keep].norm(dim=-1))
        value, pos = codes.max(dim=1)  # [B, L]
        best.append(value)
        where.append(pos)
    median = float(torch.cat(norms).median())
    return corpus.tokens, torch.cat(best), torch.cat(where), fires / kept, median


def window(tokenizer, tokens, ctx: int, pos: int, before: int = WINDOW - 1) -> str:
    return tokenizer.decode(tokens[ctx, max(1, pos - before):pos + 1])


def choose_features(lm, sae, encoder, tokens, best, where, rate, n: int, seed: int):
    """The `n` most coherent features (top contexts alike in MiniLM) among sampled candidates."""
    distinct = (best > 0).sum(0)
    ok = ((rate > 5e-4) & (rate < 0.02) & (distinct >= 8)).nonzero()[:, 0].tolist()
    random.Random(seed).shuffle(ok)
    scored = []
    for f in ok[:200]:
        top = best[:, f].topk(8).indices.tolist()
        vectors = encoder([window(lm.tokenizer, tokens, c, int(where[c, f])) for c in top])
        sim = vectors @ vectors.T
        scored.append((float((sim.sum() - sim.trace()) / (len(top) * (len(top) - 1))), f))
    scored.sort(reverse=True)
    return [f for _, f in scored[:n]], len(ok)


def concept(lm, encoder, tokens, best, where, f: int, n: int = 30):
    """Top contexts of feature f: their windows and the unit mean of their embeddings."""
    top = best[:, f].topk(n).indices.tolist()
    texts = [window(lm.tokenizer, tokens, c, int(where[c, f])) for c in top]
    centre = torch.nn.functional.normalize(encoder(texts[:16]).mean(0), dim=0)
    return top, texts, centre


def induction(lm, sae, encoder, f, norm, centre, prompts, max_new_tokens) -> list[dict]:
    from saelab.steer import add, generate

    rows, clean_cos = [], None
    for m in MULTIPLES:
        gens = [generate(lm, sae, p, [add(f, m * norm)] if m else [], f, max_new_tokens)
                for p in prompts]
        texts = [g.text for g in gens]
        cos = float((encoder(texts) @ centre).mean())
        clean_cos = cos if m == 0 else clean_cos
        ppl = math.exp(sum(math.log(g.perplexity) for g in gens) / len(gens))
        rows.append({"feature": f, "strength_x_norm": m, "strength": round(m * norm, 2),
                     "activation": sum(g.mean_activation for g in gens) / len(gens),
                     "fires_on": sum(sum(a > 0 for a in g.activations) for g in gens)
                     / max(1, sum(len(g.activations) for g in gens)),
                     "cos_to_top_contexts": cos, "cos_change": cos - clean_cos,
                     "perplexity": ppl, "example": texts[0][:80]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def suppression(lm, sae, encoder, f, max_act, tokens, best, where, top, max_new_tokens
                ) -> list[dict]:
    from saelab.steer import EmbeddingProbe, compare_tiers

    prompts = [lm.tokenizer.decode(tokens[c, 1:int(where[c, f])]) for c in top[:6]]
    prompts = [p for p in prompts if p.strip()]
    positives = [window(lm.tokenizer, tokens, c, int(where[c, f])) for c in top[6:30]]
    silent = (best[:, f] == 0).nonzero()[:, 0].tolist()[:24]
    negatives = [lm.tokenizer.decode(tokens[c, 1:WINDOW + 1]) for c in silent]
    probe = EmbeddingProbe.fit(positives, negatives, encoder)
    results = compare_tiers(lm, sae, f, prompts, strength=-max_act, clamp_value=0.0,
                            probe=probe, max_new_tokens=max_new_tokens)
    rows = []
    for r in results:
        rows.append({"feature": f, "tier": r.tier, "activation": r.activation,
                     "activation_reduction": r.activation_reduction, "probe": r.probe,
                     "probe_reduction": r.probe_reduction, "perplexity": r.perplexity,
                     "example": r.texts[0][:80]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mean_rows(rows: list[dict], key: str, figures: tuple[str, ...]) -> list[dict]:
    """One row per value of `key`: each figure's mean over the features (feature "mean")."""
    out = []
    for value in dict.fromkeys(r[key] for r in rows):
        group = [r for r in rows if r[key] == value]
        out.append({"feature": "mean", key: value,
                    **{f: sum(r[f] for r in group) / len(group) for f in figures}})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", default="demo_out/sae")
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--contexts", type=int, default=300)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/steer_bench")
    p.add_argument("--json", default=None)
    p.add_argument("--tiers-json", default=None)
    args = p.parse_args()
    from results_records import merge_records

    from saelab.interpret.explain.embedding import Encoder
    from saelab.interpret.explain.intervention import PROMPTS
    from saelab.models import load

    load_before, start = os.getloadavg(), time.time()
    torch.manual_seed(args.seed)
    lm = load("smollm2-135m")
    sae, source = load_or_train(args.sae, Path(args.work), lm)
    encoder = Encoder.load()
    tokens, best, where, rate, norm = read_corpus(lm, sae, args.contexts)
    feats, n_cand = choose_features(lm, sae, encoder, tokens, best, where, rate, args.features,
                                    args.seed)
    print(f"features {feats} of {n_cand} candidates ({time.time() - start:.0f} s)", flush=True)
    induced, tiers = [], []
    for f in feats:
        top, texts, centre = concept(lm, encoder, tokens, best, where, f)
        max_act = float(best[:, f].max())
        print(f"feature {f}: max {max_act:.2f}, rate {float(rate[f]):.4f}; top contexts: "
              f"{texts[:3]}", flush=True)
        for r in induction(lm, sae, encoder, f, norm, centre, list(PROMPTS),
                           args.max_new_tokens):
            induced.append({**r, "top_context": texts[0][-40:]})
        tiers += suppression(lm, sae, encoder, f, max_act, tokens, best, where, top,
                             args.max_new_tokens)
    induced += mean_rows(induced, "strength_x_norm", ("activation", "fires_on",
                                                     "cos_to_top_contexts", "cos_change",
                                                     "perplexity"))
    tiers += mean_rows(tiers, "tier", ("activation", "activation_reduction", "probe",
                                       "probe_reduction", "perplexity"))
    minutes = (time.time() - start) / 60
    command = ("OMP_NUM_THREADS=1 .venv/bin/python bench/steer_smollm2.py --sae " + args.sae
               + f" --features {args.features} --max-new-tokens {args.max_new_tokens}")
    notes = (f"SAE: {source}. Hookpoint {HOOKPOINT} (median activation norm {norm:.1f}); "
             f"{args.contexts} held-out contexts of 64 "
             f"tokens read; features chosen from {n_cand} candidates by top-context coherence; "
             f"{len(PROMPTS)} neutral prompts; {minutes:.1f} min in all.")
    if args.json:
        merge_records(args.json, induced, ("feature", "strength_x_norm"), {
            "title": "Steering SmolLM2-135M with SAE features: concept induced, fluency cost",
            "command": command + f" --json {args.json}", "notes": notes}, load_before)
    if args.tiers_json:
        merge_records(args.tiers_json, tiers, ("feature", "tier"), {
            "title": "Tiers of suppression (Breaking Bad Tokens) on SmolLM2-135M",
            "command": command + f" --tiers-json {args.tiers_json}", "notes": notes},
            load_before)


if __name__ == "__main__":
    main()
