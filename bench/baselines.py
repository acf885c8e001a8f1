"""Every non-SAE decomposition next to a TopK SAE on the same SmolLM2-135M activations: FVU, L0,
spliced cross-entropy, sparse-probing accuracy on the Wikipedia topics, and fitting time.

Two sites of one layer:

- the residual stream after the block (`model.layers.L`): `topk` (a TopK SAE, trained by
  gradient), `pca` and `ica` with k components (dense codes: the same L0 as TopK's k), `itda`;
- its MLP: `mlp_neurons` and `topk_neurons` (read from the model's weights, MLP input -> MLP
  output), a TopK `transcoder` (MLP input -> MLP output, trained), a TopK SAE on the MLP's output
  (`model.layers.L.mlp`), and `semi_nmf` on the MLP's hidden activations (the input of
  `down_proj`).

Every dictionary is evaluated with `saelab.evaluate` on held-out activations of the same model
(captured after the training tokens) with the families `reconstruction`, `sparsity`, `splice`
(the dictionary's output spliced into the model's forward at its site) and `sparse_probing`
(texts of the packaged Wikipedia summaries, labelled with their topic).

    OMP_NUM_THREADS=2 python bench/baselines.py --write

writes bench/results/baselines.json (shown in docs/benchmarks/baselines.md). Activations are
captured once into saelab's cache (`--cache` to choose). `diffmeans` is not in the table: it
needs a label per activation row, which a store does not hold (its use as a yardstick is the
sparse-probing column: a probe on raw activations).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import saelab
from saelab.data.labelled import wikipedia_topics
from saelab.evaluate import figures
from saelab.store import ActivationStore

from results_records import merge_records  # noqa: E402  (bench/, beside this file)

FAMILIES = ("reconstruction", "sparsity", "splice", "sparse_probing")


def activations(lm, hookpoints: list[str], out: Path, n_tokens: int, skip_tokens: int):
    """The store at `out`, captured there first if it is not already."""
    from saelab.pipeline import CaptureConfig, capture

    if (out / "manifest.json").is_file():
        return ActivationStore(out)
    return capture(CaptureConfig(out=str(out), model=lm.name, hookpoints=hookpoints,
                                 n_tokens=n_tokens, skip_tokens=skip_tokens, progress=False), lm)


def train_config(args, store: ActivationStore, **kw) -> saelab.TrainConfig:
    steps = int(args.epochs * store.n_rows) // args.batch_size
    return saelab.TrainConfig(steps=steps, batch_size=args.batch_size, seed=0, progress=False,
                              dead_after_tokens=min(100_000, store.n_rows), **kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--tokens", type=int, default=131_072, help="training tokens captured")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens captured")
    p.add_argument("--splice-tokens", type=int, default=4_096)
    p.add_argument("--per-class", type=int, default=50, help="texts per topic (sparse probing)")
    p.add_argument("--n-latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--epochs", type=float, default=4.0, help="passes of the gradient-trained")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--semi-nmf-latents", type=int, default=100)
    p.add_argument("--only", nargs="*", help="run only these rows (by name)")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--write", action="store_true", help="write bench/results/baselines.json")
    args = p.parse_args()

    from saelab.models import load

    lm = load("smollm2-135m")
    L = args.layer
    resid, mlp_in, mlp_out = f"model.layers.{L}", f"model.layers.{L}.mlp:input", \
        f"model.layers.{L}.mlp"
    hidden = f"model.layers.{L}.mlp.down_proj:input"
    sites = [resid, mlp_in, mlp_out, hidden]
    if args.cache is None:
        from saelab._paths import cache_dir
        args.cache = cache_dir() / "bench" / f"baselines_l{L}"
    train = activations(lm, sites, args.cache / f"train_{args.tokens}", args.tokens, 0)
    held = activations(lm, sites, args.cache / f"eval_{args.eval_tokens}", args.eval_tokens,
                       args.tokens)
    n_ctx = max(1, args.splice_tokens // held.manifest["context_len"])
    tokens = held.contexts()["tokens"][:n_ctx]
    labels = wikipedia_topics(per_class=args.per_class).tokenize(lm.tokenizer)
    d, d_hidden = lm.d_model, held.d(hidden)
    print(f"SmolLM2-135M layer {L}: {train.n_rows:,} training rows, {held.n_rows:,} held out; "
          f"{n_ctx} contexts spliced; {len(labels)} labelled texts; torch threads "
          f"{torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}", flush=True)

    def topk(d_in, **kw):
        return saelab.create("topk", d_in=d_in, n_latents=args.n_latents, k=args.k, **kw)

    plan = [  # name, site read, target (None: the site), how it is made
        ("topk", resid, None, lambda: saelab.fit(topk(d), train, train_config(args, train,
                                                                               hookpoint=resid))),
        ("pca", resid, None, lambda: saelab.fit(
            saelab.create("pca", d_in=d, n_latents=args.k), train,
            saelab.TrainConfig(epochs=1, batch_size=args.batch_size, hookpoint=resid,
                               progress=False))),
        ("ica", resid, None, lambda: saelab.fit(
            saelab.create("ica", d_in=d, n_latents=args.k, seed=0), train,
            saelab.TrainConfig(epochs=1, batch_size=args.batch_size, hookpoint=resid,
                               progress=False))),
        ("itda", resid, None, lambda: saelab.fit(
            saelab.create("itda", d_in=d, n_latents=args.n_latents, k=args.k), train,
            saelab.TrainConfig(epochs=1, batch_size=1024, order="sequential", hookpoint=resid,
                               progress=False))),
        ("mlp_neurons", mlp_in, mlp_out, lambda: saelab.dictionaries.get(
            "mlp_neurons").from_model(lm, mlp_out)),
        ("topk_neurons", mlp_in, mlp_out, lambda: saelab.dictionaries.get(
            "topk_neurons").from_model(lm, mlp_out, k=args.k)),
        ("transcoder", mlp_in, mlp_out, lambda: saelab.fit(
            saelab.create("transcoder", d_in=d, d_out=d, n_latents=args.n_latents, k=args.k),
            train, train_config(args, train, hookpoint=mlp_in, target_hookpoint=mlp_out))),
        ("topk (MLP out)", mlp_out, None, lambda: saelab.fit(
            topk(d), train, train_config(args, train, hookpoint=mlp_out))),
        ("semi_nmf", hidden, None, lambda: saelab.fit(
            saelab.create("semi_nmf", d_in=d_hidden, n_latents=args.semi_nmf_latents, seed=0),
            train, saelab.TrainConfig(epochs=1, batch_size=args.batch_size, hookpoint=hidden,
                                      progress=False))),
    ]
    out = Path(__file__).parent / "results" / "baselines.json"
    command = "OMP_NUM_THREADS=2 python bench/baselines.py --write" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("write", "cache", "only") and v != p.get_default(k))
    meta = {"title": f"Decompositions vs TopK on SmolLM2-135M layer {L} (held-out activations)",
            "command": command,
            "notes": f"{train.n_rows:,} training rows, {held.n_rows:,} held-out rows, "
                     f"{n_ctx * held.manifest['context_len']:,} tokens spliced, {len(labels)} "
                     f"texts of {len(labels.classes)} topics probed; TopK, transcoder: "
                     f"{args.n_latents} latents, k {args.k}, {args.epochs} epochs of batch "
                     f"{args.batch_size}; pca, ica: k components. Fit times are wall-clock on a "
                     f"machine shared with other jobs: compare them with the load column"}
    for name, site, target, make in plan:
        if args.only and name not in args.only:
            continue
        load = os.getloadavg()
        start = time.perf_counter()
        dictionary = make()
        seconds = time.perf_counter() - start
        report = saelab.evaluate(dictionary, held, metrics=FAMILIES, hookpoint=site,
                                 target_hookpoint=target, model=lm.model, tokens=tokens,
                                 labels=labels, seed=0)
        f = figures(report)
        row = {"dictionary": name, "site": site + (f" -> {target}" if target else ""),
               "latents": dictionary.n_latents, "fit time s": round(seconds, 1),
               "FVU": f["fvu"], "L0": f["l0"], "clean CE": f["ce_loss_clean"],
               "spliced CE": f["ce_loss_spliced"], "CE recovered": f["ce_loss_recovered"],
               "probe k=1": f["sae_accuracy_k1"], "probe k=20": f["sae_accuracy_k20"],
               "probe raw": f["raw_accuracy"]}
        print(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items()) + f"  (load {os.getloadavg()[0]:.2f})",
              flush=True)
        if args.write:  # row by row: an interrupted run keeps what it finished
            merge_records(out, [row], ("dictionary",), meta, load)
    if args.write:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
