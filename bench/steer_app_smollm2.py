"""APP (attenuation via posterior probabilities, Fereidouni et al. 2025) against full masking on
the same concept, SmolLM2-135M layer 15 with a TopK SAE: which removes a Wikipedia topic from the
model's continuations at the smaller fluency cost?

    OMP_NUM_THREADS=1 .venv/bin/python bench/steer_app_smollm2.py --sae demo_out/sae \
        --concept Mathematics --json bench/results/steer_app_smollm2.json

1. Codes by class: the first `--tokens` tokens of `--fit-docs` summaries of each of the 11
   Wikipedia topics (the packaged file's labels) are read at layer 15 and encoded; the
   exclusion rule of the SAE leaves out the first position and separators.
2. The concept's features: those firing on at least `--min-fraction` of its token rows; full
   masking zeroes them all, APP zeroes those that fire that often only for the concept and damps
   the others by 1 - P(concept | code) (`saelab.steer.Attenuation`).
3. Held-out summaries of the concept (not used in 1) are cut to their first 24 tokens and
   continued greedily for `--max-new-tokens` tokens: clean, masked, APP. Reported: a topic probe
   on the continuation (logistic regression on MiniLM embeddings of other summaries of the
   concept against summaries of the other topics), the concept features' summed code on the
   continuation as the clean model reads it, and the perplexity of the continuation under the
   clean model. The paper's claim: APP's perplexity rises least at equal concept removal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

HOOKPOINT = "model.layers.15"


@torch.no_grad()
def codes_of(lm, sae, texts: list[str], n_tokens: int) -> torch.Tensor:
    """Codes [rows, n_latents] of the kept positions of each text's first `n_tokens` tokens."""
    from saelab.capture import capture
    from saelab.capture.exclude import Exclusion

    rule = Exclusion.from_json(sae.provenance.get("data_exclusion"))
    rows = []
    for text in texts:
        ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :n_tokens]
        act = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT]
        keep = rule.keep_mask(ids, {HOOKPOINT: act})[0]
        rows.append(sae.encode(act[0][keep]))
    return torch.cat(rows)


@torch.no_grad()
def concept_load(lm, sae, prompt: str, text: str, features: list[int]) -> float:
    """Mean over continuation tokens of the concept features' summed code (clean reading)."""
    from saelab.capture import capture

    p = lm.tokenizer(prompt, return_tensors="pt").input_ids
    c = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if c.shape[1] == 0:
        return 0.0
    act = capture(lm.model, [HOOKPOINT], torch.cat([p, c], 1))[HOOKPOINT][0, p.shape[1]:]
    return float(sae.encode(act)[:, features].sum(1).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", default="demo_out/sae")
    p.add_argument("--concept", default="Mathematics")
    p.add_argument("--fit-docs", type=int, default=24)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--min-fraction", type=float, default=0.1)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from results_records import merge_records

    import saelab
    from saelab.data import wikipedia_topics
    from saelab.steer import Attenuation, EmbeddingProbe, generate, masking_edit
    from saelab.steer.app import concept_features

    load_before, start = os.getloadavg(), time.time()
    from saelab.models import load

    lm, sae = load("smollm2-135m"), saelab.load(args.sae)
    topics = wikipedia_topics(per_class=None)
    by_class: dict[str, list[str]] = {}
    for text, label in zip(topics.texts, topics.labels):
        by_class.setdefault(label, []).append(text)
    fit = {k: codes_of(lm, sae, v[:args.fit_docs], args.tokens) for k, v in by_class.items()}
    mono, poly = concept_features(fit, args.concept, args.min_fraction)
    print(f"{args.concept}: {len(mono)} monosemantic, {len(poly)} polysemantic features "
          f"({time.time() - start:.0f} s)", flush=True)
    conditions = {"clean": [], "full masking": [masking_edit(fit, args.concept,
                                                             args.min_fraction)],
                  "APP": [Attenuation.fit(fit, args.concept, args.min_fraction)]}
    del fit
    own = by_class[args.concept]
    held_out = own[args.fit_docs:args.fit_docs + args.prompts]
    prompts = [lm.tokenizer.decode(lm.tokenizer(t).input_ids[:24]) for t in held_out]
    start_probe = args.fit_docs + args.prompts
    others = [t for k, v in by_class.items() if k != args.concept for t in v[args.fit_docs:][:4]]
    probe = EmbeddingProbe.fit([t[:300] for t in own[start_probe:start_probe + 40]],
                               [t[:300] for t in others])
    rows, features = [], mono + poly
    for name, edits in conditions.items():
        gens = [generate(lm, sae, q, edits, features[0], args.max_new_tokens) for q in prompts]
        texts = [g.text for g in gens]
        rows.append({"concept": args.concept, "condition": name,
                     "features_edited": 0 if not edits else len(edits[0].features),
                     "probe": sum(probe(texts)) / len(texts),
                     "concept_code": sum(concept_load(lm, sae, q, t, features)
                                         for q, t in zip(prompts, texts)) / len(texts),
                     "perplexity": math.exp(sum(math.log(g.perplexity) for g in gens)
                                            / len(gens)),
                     "example": texts[0][:80]})
        print(json.dumps(rows[-1]), flush=True)
    clean = rows[0]
    for r in rows:
        r["probe_reduction"] = clean["probe"] - r["probe"]
        r["perplexity_increase"] = r["perplexity"] - clean["perplexity"]
    minutes = (time.time() - start) / 60
    if args.json:
        merge_records(args.json, rows, ("concept", "condition"), {
            "title": "APP against full masking on a Wikipedia topic, SmolLM2-135M layer 15",
            "command": (f"OMP_NUM_THREADS=1 .venv/bin/python bench/steer_app_smollm2.py --sae "
                        f"{args.sae} --concept {args.concept} --json {args.json}"),
            "notes": (f"{len(mono)} monosemantic and {len(poly)} polysemantic features (active on "
                      f">= {args.min_fraction:.0%} of the concept's token rows, from the first "
                      f"{args.tokens} tokens of {args.fit_docs} summaries per topic); "
                      f"{len(prompts)} held-out summaries of the concept cut to 24 tokens, "
                      f"continued for {args.max_new_tokens}; {minutes:.1f} min.")}, load_before)


if __name__ == "__main__":
    main()
