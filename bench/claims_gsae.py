"""g-SAE (Olmo et al. 2024, "Features that Make a Difference"): does selecting the k latents with
the loss gradient make the SAE more faithful downstream than TopK at the same k?

SmolLM2-135M, residual stream after block 15, packaged Wikipedia summaries in contexts of 128
tokens. Training contexts are captured with their loss gradients into a store
(`capture_to_store(..., gradients=True)`: activation and d(next-token loss)/d(activation) per
token, special tokens and rows above 5x the median norm left out), and both dictionaries are
trained from that store with the same seed, initialisation, k, width and schedule; only the
selection differs. Held-out contexts come from other articles.

Per dictionary, on held-out tokens:
- fvu: fraction of variance unexplained with the inference selection (no gradient: TopK's);
- fvu_grad: g-SAE with the held-out tokens' own gradients in the selection;
- ce_spliced: next-token CE (nats/token) with the SAE's reconstruction in place of the layer's
  output (excluded positions left untouched), selection without gradients (what a user of the
  saved SAE gets); ce_spliced_grad: the same with the gradient-aware selection, each batch's
  gradients taken from the clean model first (one backward per batch);
- recovered: 1 - (spliced - clean) / (mean-ablated - clean), from ce_spliced;
- dead: fraction of latents that never fire on the held-out tokens.

The differences seen here (2,000 held-out tokens, one seed per run) are of the order of the
spread between seeds: run several seeds before reading a winner into one table.

The selection score is the paper's z + beta z |W_dec g| by default, in which beta carries the
gradient's units: `--betas` sweeps it, and each g-SAE row reports the median of a = |W_dec g|
over held-out tokens and latents (so beta x a_median is the typical relative boost);
`--row-mean` adds saelab's normalised form (a divided by its per-row mean) at beta 1.

    python bench/claims_gsae.py [--quick] [--betas 1 10 100] [--row-mean] [--seed 0]
        [--json bench/results/claims_gsae_sweep.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

import saelab
from saelab.capture.exclude import Exclusion
from saelab.capture.gradients import GradientCapture, gradient_key
from saelab.capture.patch import patch
from saelab.evaluate import spliced_loss

log = logging.getLogger(__name__)
LAYER, CONTEXT = 15, 128


def capture(lm, docs, hp: str, n_contexts: int, out):
    """A store of `n_contexts` contexts of `docs` with activations and loss gradients at `hp`."""
    from saelab.data import pack
    from saelab.store import capture_to_store

    corpus = pack(docs, lm.tokenizer, context_len=CONTEXT, max_contexts=n_contexts)
    store = capture_to_store(lm.model, corpus.tokens, [hp], out, model_name=lm.name,
                             doc_ids=corpus.doc_ids, special_ids=corpus.special_ids,
                             progress=False, gradients=True)
    return store, corpus.tokens


def rows(store, key: str) -> torch.Tensor:
    return torch.cat([a for a, _ in store.iter_rows(key, 8192)]).float()


@torch.no_grad()
def fvu_dead(sae, x: torch.Tensor, grads: torch.Tensor | None = None) -> tuple[float, float]:
    codes = sae.encode(x) if grads is None else sae.encode(x, grads)
    err = (sae.decode(codes) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return float(err), float(((codes > 0).sum(0) == 0).float().mean())


def spliced_with_gradients(model, tokens: torch.Tensor, hp: str, sae, exclusion: Exclusion,
                           batch_contexts: int = 8) -> float:
    """Mean next-token CE with g-SAE's reconstruction spliced in at `hp`, its latents selected
    with each token's gradient from the clean model (excluded positions left untouched)."""
    cap = GradientCapture(model, hp)
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], batch_contexts):
        batch = tokens[start:start + batch_contexts]
        out = cap.run(input_ids=batch)
        acts, grads = out[hp], out[gradient_key(hp)]
        keep = exclusion.keep_mask(batch, {hp: acts})

        def replace(act: torch.Tensor) -> torch.Tensor:
            new = act.clone()
            new[keep] = sae(act[keep].float(), grads[keep]).x_hat.to(act.dtype)
            return new

        with torch.no_grad(), patch(model, hp, replace):
            logits = model(input_ids=batch).logits[:, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               batch[:, 1:].reshape(-1), reduction="sum")
        total, count = total + float(ce), count + batch[:, 1:].numel()
    return total / count


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run)")
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    p.add_argument("--row-mean", action="store_true", dest="row_mean",
                   help="also saelab's per-row-mean normalised score at beta 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="merge the rows into this results file")
    args = p.parse_args(argv)
    loadavg = os.getloadavg()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from saelab._paths import cache_dir
    from saelab.data import read_documents
    from saelab.models import load

    n_train, n_held, n_latents, k, epochs = ((16, 4, 576, 16, 4) if args.quick
                                             else (64, 16, 576, 16, 10))
    t0 = time.time()
    lm = load("smollm2-135m")
    hp = lm.layer_template.format(LAYER)
    docs = read_documents("wikipedia")
    root = cache_dir() / "bench_gsae" / f"L{LAYER}_{n_train}x{n_held}"
    train, _ = capture(lm, docs[:2000], hp, n_train, root / "train")
    held, held_tokens = capture(lm, docs[6000:8000], hp, n_held, root / "held")
    log.info("captured %d train / %d held-out rows with gradients in %.0f s", train.n_rows,
             held.n_rows, time.time() - t0)
    cfg = saelab.TrainConfig(epochs=epochs, batch_size=256, lr=2e-3, seed=args.seed,
                             progress=False, dead_after_tokens=train.n_rows, hookpoint=hp)
    x, g = rows(held, hp), rows(held, gradient_key(hp))
    exclusion = Exclusion(**held.manifest["exclusion"])
    mean = held.mean(hp)
    table = []
    runs = [("topk", {})] + [("gsae_gradient", {"beta": b}) for b in args.betas]
    if args.row_mean:
        runs.append(("gsae_gradient", {"beta": 1.0, "gradient_scale": "row_mean"}))
    for name, fields in runs:
        torch.manual_seed(args.seed)
        t1 = time.time()
        sae = saelab.fit(saelab.create(name, d_in=lm.d_model, n_latents=n_latents, k=k,
                                       **fields), train.path, cfg)
        fvu, dead = fvu_dead(sae, x)
        splice = spliced_loss(lm.model, held_tokens, hp, sae, exclusion, mean)
        label = name + "".join(f" {f}={v:g}" if isinstance(v, float) else f" {f}={v}"
                               for f, v in fields.items())
        row = {"method": label, "k": k, "a_median": float("nan"),
               "fvu": fvu, "fvu_grad": float("nan"), "ce_clean": splice["ce_loss_clean"],
               "ce_spliced": splice["ce_loss_spliced"], "ce_spliced_grad": float("nan"),
               "recovered": splice["ce_loss_recovered_vs_mean"], "dead": dead}
        if fields:
            with torch.no_grad():
                row["a_median"] = float((g @ sae.W_dec.T).abs().median())
            row["fvu_grad"] = fvu_dead(sae, x, g)[0]
            row["ce_spliced_grad"] = spliced_with_gradients(lm.model, held_tokens, hp, sae,
                                                            exclusion)
        row["seconds"] = time.time() - t1
        table.append(row)
    print(f"\nSmolLM2-135M layer {LAYER}, {train.n_rows} train / {held.n_rows} held-out tokens, "
          f"{n_latents} latents, k={k}, {epochs} epochs; total {time.time() - t0:.0f} s")
    cols = ["method", "k", "a_median", "fvu", "fvu_grad", "ce_clean", "ce_spliced",
            "ce_spliced_grad", "recovered", "dead", "seconds"]
    print(" | ".join(f"{c:>15}" if c != "method" else f"{c:<32}" for c in cols))
    for r in table:
        print(" | ".join(f"{r[c]:<32}" if c == "method" else
                         f"{r[c]:>15}" if isinstance(r[c], int) else f"{r[c]:>15.4f}"
                         for c in cols))
    base = table[0]
    for r in table[1:]:
        r["verdict"] = (f"spliced CE {r['ce_spliced']:.4f} vs TopK {base['ce_spliced']:.4f} "
                        f"({r['ce_spliced'] - base['ce_spliced']:+.4f}); with gradients "
                        f"{r['ce_spliced_grad']:.4f}")
        print(f"{r['method']}: {r['verdict']}")
    base["verdict"] = "baseline"
    if args.json:
        write_rows(Path(args.json), table, args.seed, loadavg, {
            "title": "g-SAE (gsae_gradient, the paper's score) against TopK on SmolLM2-135M, "
                     "beta swept",
            "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/claims_gsae.py --betas B ... "
                       "--row-mean --seed S --json bench/results/claims_gsae_sweep.json",
            "notes": f"Residual stream after block {LAYER}, {train.n_rows} training / "
                     f"{held.n_rows} held-out Wikipedia tokens, {n_latents} latents, k = {k}, "
                     f"{epochs} epochs; spliced next-token CE on held-out text (nats/token). "
                     f"a_median: median |W_dec g| over held-out tokens and latents."})


def write_rows(path, table: list[dict], seed: int, load, meta: dict) -> None:
    """Merge `table` (rows of one seed) into the results file at `path`."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_records import merge_records

    rows = [{"seed": seed, **{c: (None if isinstance(v, float) and v != v else v)
                              for c, v in r.items()}} for r in table]
    merge_records(path, rows, ("seed", "method"), meta, load)


if __name__ == "__main__":
    main()
