"""RISE (Zhang et al. 2025, "Fantastic Reasoning Behaviors and Where to Find Them") on the packaged
SmolLM2-135M-Instruct: step-level SAE, clusters of its decoder directions, and steering with one.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rise_smollm2.py --json-prefix bench/results/rise

1. Chains of thought: `--train-problems` arithmetic word problems (seed 0), greedy, chat
   template, "Solve the problem step by step, then check your answer.", `--max-new-tokens`.
2. Steps: sentences (list markers joined to their sentence); each step's mean activation at
   `--layer` over its tokens.
3. A TopK SAE (`--latents`, `--k`) trained on the step vectors with saelab.fit.
4. k-means (`--clusters`) on the unit decoder directions of the latents that fire on >= 3 steps;
   each step goes to the cluster holding most of its codes; clusters named by the keyword
   behaviours of their steps (reflection, conclusion, computation, planning, other).
5. Steering on `--eval-problems` new problems (seed 1): clean; the most reflection-enriched
   cluster's mean direction added with +-`--strength` x the median step-vector norm at every
   position (prompt and generated tokens); and, as a control, the least reflection-enriched
   cluster's direction at +-strength. (0.5 and 1.0 x the norm break the model: repeated
   fragments, "1111...".)
   Reported per condition: steps and tokens per chain, share and count of reflection steps,
   accuracy (last number = answer), perplexity under the clean model (fluency cost).
Writes PREFIX_clusters.json and PREFIX_steering.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cached_traces(lm, problems, args):
    """The training chains of thought, read from `--cache` when a run with the same settings
    wrote them (generation is most of the run's time), else generated and written there."""
    import json

    from saelab.steer.reasoning_problems import Problem
    from saelab.steer.reasoning_steps import generate_traces, trace_of

    key = f"traces-n{len(problems)}-t{args.max_new_tokens}-b{args.batch_size}.json"
    path = Path(args.cache) / key if args.cache else None
    if path is not None and path.is_file():
        rows = json.loads(path.read_text())
        return [trace_of(lm.tokenizer, Problem(*r["problem"]), r["prompt_ids"], r["ids"])
                for r in rows]
    traces = generate_traces(lm, problems, args.max_new_tokens, args.batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"problem": list(t.problem), "prompt_ids": t.prompt_ids,
                                     "ids": t.ids} for t in traces]))
    return traces


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-problems", type=int, default=80)
    p.add_argument("--eval-problems", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--latents", type=int, default=256)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--epochs", type=float, default=60)
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--strength", type=float, nargs="+", default=[0.2])
    p.add_argument("--json-prefix", default=None)
    p.add_argument("--cache", default=None, help="folder for the training chains of thought")
    args = p.parse_args()
    from results_records import merge_records

    import saelab
    from saelab.models import load
    from saelab.steer.reasoning import (KINDS, cluster_directions, describe_clusters,
                                        direction_edit, measure)
    from saelab.steer.reasoning_problems import word_problems
    from saelab.steer.reasoning_steps import step_vectors

    load_before, start = os.getloadavg(), time.time()
    lm = load("smollm2-135m")
    hookpoint = lm.layer_template.format(args.layer)
    traces = cached_traces(lm, word_problems(args.train_problems, seed=0), args)
    steps = step_vectors(lm, traces, hookpoint)
    x = steps.vectors_ND
    scale = float(x.norm(dim=1).median())
    print(f"{len(traces)} traces, {len(x)} steps, median step norm {scale:.1f} "
          f"({time.time() - start:.0f} s)", flush=True)
    sae = saelab.create("topk", d_in=x.shape[1], n_latents=args.latents, k=args.k, seed=0)
    sae = saelab.fit(sae, x, saelab.TrainConfig(epochs=args.epochs, batch_size=64, seed=0,
                                                progress=False))
    sae.provenance.update({"model": "smollm2-135m", "hookpoint": hookpoint})
    with torch.no_grad():
        fvu = float(((sae(x).x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    groups = cluster_directions(sae, x, args.clusters)
    clusters = describe_clusters(sae, steps, groups)
    cluster_rows = []
    for i, c in enumerate(clusters):
        cluster_rows.append({"cluster": i, "latents": len(c.latents), "steps": c.steps,
                             "label": c.label, **{f"{k}_share": c.shares[k] for k in KINDS},
                             "reflection_enrichment": c.enrichment["reflection"],
                             "position": c.position,
                             "example": (c.examples[0][:90] if c.examples else "")})
        print(cluster_rows[-1], flush=True)
    by_reflection = sorted(range(len(clusters)),
                           key=lambda i: clusters[i].enrichment["reflection"])
    reflect, control = by_reflection[-1], by_reflection[0]
    conditions = {"clean": []}
    for s in args.strength:
        conditions[f"reflection cluster {reflect} +{s:g}"] = [
            direction_edit(sae, clusters[reflect].latents, s * scale)]
        conditions[f"reflection cluster {reflect} -{s:g}"] = [
            direction_edit(sae, clusters[reflect].latents, -s * scale)]
        conditions[f"control cluster {control} +{s:g}"] = [
            direction_edit(sae, clusters[control].latents, s * scale)]
        conditions[f"control cluster {control} -{s:g}"] = [
            direction_edit(sae, clusters[control].latents, -s * scale)]
    results = measure(lm, sae, word_problems(args.eval_problems, seed=1), conditions, hookpoint,
                      args.max_new_tokens, args.batch_size)
    steer_rows = []
    for r in results:
        steer_rows.append({"condition": r.name, "steps": r.steps, "tokens": r.tokens,
                           "reflection_rate": r.rates["reflection"],
                           "reflection_per_chain": r.per_trace["reflection"],
                           "conclusion_rate": r.rates["conclusion"],
                           "accuracy": r.accuracy, "perplexity": r.perplexity,
                           "example": r.traces[0].text[:100].replace("\n", " ")})
        print(steer_rows[-1], flush=True)
    minutes = (time.time() - start) / 60
    print(f"total {minutes:.1f} min", flush=True)
    if args.json_prefix:
        command = ("OMP_NUM_THREADS=1 .venv/bin/python bench/rise_smollm2.py --json-prefix "
                   f"{args.json_prefix} --train-problems {args.train_problems} --eval-problems "
                   f"{args.eval_problems} --strength {' '.join(f'{s:g}' for s in args.strength)}")
        notes = (f"SmolLM2-135M-Instruct, layer {args.layer}; {len(traces)} chains of thought "
                 f"(max {args.max_new_tokens} tokens), {len(x)} steps; TopK SAE "
                 f"{args.latents} latents k {args.k}, FVU {fvu:.3f} on the steps; "
                 f"{args.clusters} k-means clusters; strength in units of the median step "
                 f"norm ({scale:.0f}); {args.eval_problems} held-out problems; "
                 f"{minutes:.1f} min.")
        merge_records(f"{args.json_prefix}_clusters.json", cluster_rows, ("cluster",), {
            "title": "RISE clusters of step-SAE decoder directions, SmolLM2-135M",
            "command": command, "notes": notes}, load_before)
        merge_records(f"{args.json_prefix}_steering.json", steer_rows, ("condition",), {
            "title": "Steering SmolLM2-135M's chains of thought with a RISE cluster direction",
            "command": command, "notes": notes}, load_before)


if __name__ == "__main__":
    main()
