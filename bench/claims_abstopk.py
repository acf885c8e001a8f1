"""AbsTopK against BatchTopK in the paper's setting, as far as a CPU allows (issue 15; run by
bench/seed_methods.py, see its docstring for the interface, or directly:
`OMP_NUM_THREADS=1 .venv/bin/python bench/claims_abstopk.py --seed 0 --json OUT`).

Zhu, Khalili and Zhu 2025 ("AbsTopK: Rethinking Sparse Autoencoders For Bidirectional
Features") train the batch form of AbsTopK (`BatchAbsoluteKSAE` in `src/sae.py` of
github.com/xzAscC/sae: the k x B largest |pre| over the batch, signed, no encoder bias) next to
BatchTopK, at k about 0.1 x d_model (51 for Pythia-70M's 512), 16 x d_model latents, batches of
128 vectors for 30,000 steps (3.8M vectors), a latent dead after 5 batches without firing, AuxK
weight 1/32; the claim is a lower reconstruction error at the same L0.

Here (`abstopk_batch`): SmolLM2-135M, residual stream after block 15 (d_model 576), k 58,
2,304 latents (4 x d_model), both dictionaries with the same data, seed, steps, batch (1,024)
and lr (2e-3); a latent counts as dead for AuxK after 20 batches (20,480 vectors) without
firing, so AuxK acts in both. The training set is by default 250k captured tokens (the store's
exclusion rule applied) read for 4 epochs, about 1M training vectors; `--train-tokens 500000
--epochs 5` reads 500k distinct tokens (the next 250k captured after the held-out range) for
2.45M vectors, about 5 minutes per dictionary on one quiet thread. Held out: the
next 16k tokens. Both are evaluated
in eval mode, per row (BatchTopK with its learned threshold, AbsTopK with its threshold on
|pre|), so the held-out L0 of each is reported next to its FVU; `fvu_batch` is the held-out
FVU with the training-time batch selection in batches of 1,024 (the reference's evaluation),
where both spend exactly 58 pairs per row on average; the training curve (FVU every 200 steps)
shows whether the baseline converged.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import saelab
from saelab.evaluate import figures

LAYER, K, LATENTS, BATCH, LR = 15, 58, 2304, 1024, 2e-3
TRAIN_TOKENS, HELD_TOKENS, EPOCHS, DEAD_BATCHES = 250_000, 16_384, 4, 20


def real_data(quick: bool = False,
              n_train: int = TRAIN_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """SmolLM2-135M layer-15 residuals, training and held-out rows (captured once into the
    saelab cache). The held-out tokens follow the first TRAIN_TOKENS training tokens; training
    tokens beyond those are captured after the held-out range, so the two never overlap."""
    from saelab._paths import cache_dir
    from saelab.models import load
    from saelab.pipeline import CaptureConfig, capture

    lm = load("smollm2-135m")
    hp = lm.layer_template.format(LAYER)
    root = cache_dir() / "bench" / "claims_abstopk"
    first = 50_000 if quick else min(n_train, TRAIN_TOKENS)
    common = {"model": "smollm2-135m", "hookpoints": [hp], "progress": False}
    held = capture(CaptureConfig(out=str(root / f"eval_{HELD_TOKENS}"), n_tokens=HELD_TOKENS,
                                 skip_tokens=TRAIN_TOKENS, **common), lm)
    stores = [capture(CaptureConfig(out=str(root / f"train_{first}"), n_tokens=first,
                                    **common), lm)]
    if n_train > first and not quick:
        after = TRAIN_TOKENS + HELD_TOKENS
        stores.append(capture(CaptureConfig(
            out=str(root / f"train_{n_train - first}_after_{after}"), n_tokens=n_train - first,
            skip_tokens=after, **common), lm))
    x = torch.cat([a for s in stores for a, _ in s.iter_rows(hp, 8192)]).float()
    h = torch.cat([a for a, _ in held.iter_rows(hp, 8192)]).float()
    return x, h


def curve(run: Path) -> list[float]:
    """Training FVU of every logged step (TrainConfig.log_every), from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [round(r["fvu"], 4) for r in rows if "fvu" in r]


@torch.no_grad()
def batch_mode_fvu(sae, held) -> float:
    """FVU on the held-out rows with the training-time batch selection, in batches of BATCH (the
    reference's evaluation): exactly K active pairs per row on average for both dictionaries."""
    sae.train()
    err = sum(float((sae(h).x_hat - h).pow(2).sum()) for h in held.split(BATCH))
    sae.eval()
    return err / float((held - held.mean(0)).pow(2).sum())


def fit_row(name: str, train, held, seed: int, epochs: int) -> dict:
    torch.manual_seed(seed)
    sae = saelab.create(name, d_in=train.shape[1], n_latents=LATENTS, k=K)
    steps = epochs * train.shape[0] // BATCH
    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        sae = saelab.fit(sae, train, saelab.TrainConfig(
            steps=steps, batch_size=BATCH, lr=LR, seed=seed, progress=False, out=tmp,
            log_every=200, dead_after_tokens=DEAD_BATCHES * BATCH))
        fvu_curve = curve(Path(tmp))
    seconds = time.time() - t
    r = figures(saelab.evaluate(sae, held, batch_size=4096))
    row = {"data": f"smollm2 L{LAYER} seed {seed}", "method": f"{name} k={K}",
           "l0": round(r["l0"], 2), "fvu": round(r["fvu"], 4),
           "dead": round(r["dead_fraction"], 4), "train_vectors": steps * BATCH,
           "curve": " ".join(str(v) for v in fvu_curve), "seconds": round(seconds)}
    row["fvu_batch"] = round(batch_mode_fvu(sae, held), 4)
    if name == "abstopk":
        with torch.no_grad():
            codes = torch.cat([sae.encode(h) for h in held.split(4096)])
        row["negative"] = round(float((codes < 0).sum() / (codes != 0).sum()), 3)
    return row


def abstopk_vs_batchtopk(seed: int, quick: bool = False, n_train: int = TRAIN_TOKENS,
                         epochs: int = EPOCHS) -> list[dict]:
    x, h = real_data(quick, n_train)
    epochs = 1 if quick else epochs
    rows = [fit_row(name, x, h, seed, epochs) for name in ("batchtopk", "abstopk")]
    base, abs_row = rows
    base["verdict"] = "baseline"
    abs_row["verdict"] = verdict(abs_row, base)
    return rows


def verdict(abs_row: dict, base: dict) -> str:
    """At equal L0 (the batch selection, exactly k per row on average for both), then the
    per-row inference figures, whose L0 differ."""
    lower = abs_row["fvu_batch"] < base["fvu_batch"]
    return (("holds" if lower else "does not hold")
            + f" at equal L0 {K}: FVU {abs_row['fvu_batch']:.4f} vs {base['fvu_batch']:.4f}; "
              f"per row {abs_row['fvu']:.4f} vs {base['fvu']:.4f} at L0 {abs_row['l0']:.1f} vs "
              f"{base['l0']:.1f}")


def claim_abstopk_batch(args) -> list[dict]:
    """Real data only: with no --real it returns no rows."""
    return abstopk_vs_batchtopk(args.seed, args.quick) if args.real else []


CLAIMS = {"abstopk_batch": claim_abstopk_batch}


def main() -> None:
    from claims_gba import write_results

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train-tokens", type=int, default=TRAIN_TOKENS,
                   help="distinct training tokens (beyond the first 250k, captured after the "
                        "held-out range)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--json", default=None, help="results file to write (JSON)")
    args = p.parse_args()
    load_before, t = os.getloadavg()[0], time.time()
    rows = []
    for seed in args.seeds:
        for row in abstopk_vs_batchtopk(seed, args.quick, args.train_tokens, args.epochs):
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        write_results(args.json, "AbsTopK (batch form) against BatchTopK on SmolLM2-135M",
                      "OMP_NUM_THREADS=1 .venv/bin/python bench/claims_abstopk.py --seeds "
                      + " ".join(map(str, args.seeds)) + (" --quick" if args.quick else "")
                      + f" --train-tokens {args.train_tokens} --epochs {args.epochs}"
                      + f" --json {args.json}", notes(args.train_tokens, args.epochs), rows, load_before,
                      (time.time() - t) / 60)


def notes(n_train: int, epochs: int) -> str:
    return (f"Residual stream after block {LAYER} (d_model 576); {n_train:,} training tokens "
             f"read for {epochs} epochs (train_vectors), {HELD_TOKENS:,} held-out tokens (the "
             f"store's exclusion rule applied to both); k {K} (0.1 x d_model), {LATENTS} latents, "
             f"batch {BATCH}, lr {LR}, the same seed for both; AuxK after {DEAD_BATCHES} batches "
             "without firing. Figures on the held-out rows in eval mode (per row: BatchTopK's "
             "threshold, AbsTopK's threshold on |pre|); fvu_batch: with the training-time batch "
             "selection in batches of 1,024 (L0 exactly k on average for both); negative: share of "
             "AbsTopK's active codes below 0; curve: training FVU every 200 steps.")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
