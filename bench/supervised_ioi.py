"""A supervised feature dictionary against a TopK SAE on SmolLM2-135M's IOI activations.

The three-way comparison of "Towards Principled Evaluations of Sparse Autoencoders for
Interpretability and Control" (Makelov, Lange and Nanda 2024), at the final position of the
residual stream (`saelab.dictionaries.supervised`, `saelab.data.ioi`):

1. the model's IOI accuracy on held-out prompts (logit of IO minus logit of S > 0; top token);
2. per layer: a supervised dictionary (conditional means of IO name, S name and IO position) and
   a TopK SAE (`saelab.fit`) of about the same size, both fitted to the final-position activations
   of training prompts over all names, then on held-out prompts over half the names:
   - approximation: FVU, and the logit difference recovered (0: mean ablation, 1: clean) when
     the reconstruction is spliced in at the final position (supervised: from the prompts'
     attribute values, as in the paper);
   - control: the attribute each layer carries is edited towards a counterfactual prompt's value
     (a new IO name from the other half of the names; the order of the names flipped) by the
     supervised atoms, by the SAE's interpretation-agnostic exchange of `--n-exchange` latents
     and by its F1-guided exchange; edit accuracy is agreement of the model's top token with the
     one it predicts when the counterfactual activation itself is patched in, and "answer moved"
     the share whose names' logits move as the edit predicts (io: the new name beats both; io_pos:
     S beats IO), next to the counterfactual patch's own share (the reference, not a bound: an
     edit that changes only the attribute can move the answer more often);
   - interpretability: per attribute, the best single-latent F1 per value, averaged over values,
     on `--interp` further held-out prompts over all names (activations only: no splicing).

    OMP_NUM_THREADS=2 python bench/supervised_ioi.py

Writes bench/results/supervised_ioi.json (--out) with the command and date. With `--sweep
LAYER...` it instead measures where each attribute lives: for each layer, the share of held-out
prompts whose answer moves as predicted when the final position's residual is replaced by a
counterfactual prompt's (a new IO name; the names' order flipped), written to
bench/results/supervised_ioi_layers.json (--sweep-out). That table chose the default layers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import saelab
from saelab.data import ioi
from saelab.dictionaries import supervised as sup_mod

ATTR = {name: i for i, name in enumerate(ioi.ATTRIBUTES)}


def threads() -> str:
    """The OMP_NUM_THREADS setting of this run, as a command prefix."""
    return f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}"


def fvu(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def answer_moved(result: ioi.IOIRun, base: ioi.IOIPrompts, cf: ioi.IOIPrompts,
                 attribute: str) -> float:
    """Share of prompts whose names' logits move as the edit of `attribute` predicts."""
    rows = torch.arange(len(base))
    logits = result.name_logits
    if attribute == "io":
        new = logits[rows, cf.io]
        moved = (new > logits[rows, base.io]) & (new > logits[rows, base.s])
    elif attribute == "io_pos":  # the name now at IO's old position is S's
        moved = logits[rows, base.s] > logits[rows, base.io]
    else:
        raise ValueError(attribute)
    return float(moved.float().mean())


def fit_dictionaries(d: int, train: ioi.IOIPrompts, x_train: torch.Tensor, args, log, hp):
    """{label: dictionary}: the supervised one and a TopK SAE per k, fitted to x_train."""
    sizes = train.value_counts()
    t = time.time()
    sup = saelab.create("supervised", d_in=d, n_latents=sum(sizes), values=list(sizes))
    labels = sup_mod.indicator_labels(train.attributes(), sizes)
    out = {f"supervised ({sum(sizes)} latents, 3 active)": saelab.fit(
        sup, saelab.train.Labelled(x_train, labels),
        saelab.TrainConfig(steps=1, batch_size=len(x_train), progress=False))}
    steps = args.epochs * len(x_train) // args.batch_size
    for k in args.k:
        sae = saelab.create("topk", d_in=d, n_latents=args.n_latents, k=k, seed=0)
        out[f"topk ({args.n_latents} latents, k {k})"] = saelab.fit(
            sae, x_train, saelab.TrainConfig(steps=steps, batch_size=args.batch_size, seed=0,
                                             progress=False))
    log(f"{hp}: fitted {', '.join(out)} ({steps} steps each SAE) in {time.time() - t:.1f} s")
    return out


def edits_of(dictionary, x, x_cf, f1, a, old, new, n_exchange) -> list[torch.Tensor]:
    """The edited activations: by atoms (supervised), or by exchange and F1-guided (SAEs)."""
    if dictionary.architecture == "supervised":
        return [sup_mod.edit_supervised(dictionary, x, a, old, new)]
    return [sup_mod.edit_by_exchange(dictionary, x, x_cf, n_exchange).x,
            sup_mod.edit_by_f1(dictionary, x, x_cf, f1, old, new, n_exchange).x]


def one_layer(lm, layer, args, train, x_train, held, clean, cf_pool, probe, x_probe, log):
    """The figures of one hookpoint: rows of the table (interpretability on `probe` prompts,
    whose activations are x_probe)."""
    hp = lm.layer_template.format(layer)
    sizes = train.value_counts()
    dictionaries = fit_dictionaries(lm.d_model, train, x_train, args, log, hp)
    ld_clean = clean.logit_diff(held)
    x = ioi.run(lm, held, hp).activation
    labels = held.attributes()
    ablated = ioi.run(lm, held, hp, replace=x_train.mean(0).expand_as(x)).logit_diff(held)
    attribute = args.control[args.layers.index(layer)]  # the attribute this layer carries
    a = ATTR[attribute]
    cf = ioi.counterfactual(held, attribute, pool=cf_pool, seed=1)
    x_cf = ioi.run(lm, cf, hp).activation
    patched = ioi.run(lm, held, hp, replace=x_cf)
    reference = answer_moved(patched, held, cf, attribute)
    log(f"{hp}: LD clean {ld_clean.mean():.3f}, mean-ablated {ablated.mean():.3f}; the "
        f"counterfactual patch of {attribute} moves the answer in {reference:.3f}")
    rows = [[hp, "counterfactual patch (reference)", "", "", "", attribute, "1.000",
             f"{reference:.3f}", "", "", ""]]
    old, new = labels[:, a], cf.attributes()[:, a]
    for label, dictionary in dictionaries.items():
        supervised = dictionary.architecture == "supervised"
        with torch.no_grad():
            out = dictionary(x)
            x_hat = dictionary.decode(dictionary.encode_labels(labels)) if supervised \
                else out.x_hat
            f1_train = sup_mod.attribute_f1(dictionary.encode(x_train), train.attributes()[:, a],
                                            sizes[a])
            probe_codes = dictionary.encode(x_probe)
        spliced = ioi.run(lm, held, hp, replace=x_hat).logit_diff(held)
        recovered = sup_mod.logit_diff_recovered(ld_clean, spliced, ablated)
        f1 = [sup_mod.interpretability(probe_codes, probe.attributes()[:, b],
                                       sizes[b]).mean_best_f1 for b in range(3)]
        control = []
        for x_edit in edits_of(dictionary, x, x_cf, f1_train, a, old, new, args.n_exchange):
            r = ioi.run(lm, held, hp, replace=x_edit.detach())
            control.append((sup_mod.edit_accuracy(r.prediction, patched.prediction),
                            answer_moved(r, held, cf, attribute)))
        log(f"{hp} {label}: LD recovered {recovered:.3f}, edit accuracy / answer moved "
            f"{control}, F1 {[round(v, 3) for v in f1]}")
        rows.append([hp, label, f"{fvu(x_hat, x):.3f}", f"{recovered:.3f}",
                     f"{fvu(out.x_hat, x):.3f}" if supervised else "", attribute,
                     " / ".join(f"{c[0]:.3f}" for c in control),
                     " / ".join(f"{c[1]:.3f}" for c in control), *(f"{v:.3f}" for v in f1)])
    return rows


def sweep(lm, held, cf_pool, layers, args, log) -> None:
    """Where IO and IO position live: the counterfactual patch's effect per layer."""
    hps = [lm.layer_template.format(layer) for layer in layers]
    cfs = {"io": ioi.counterfactual(held, "io", pool=cf_pool, seed=1),
           "io_pos": ioi.counterfactual(held, "io_pos")}
    rows = []
    for attribute, cf in cfs.items():
        acts = ioi.final_activations(lm, cf, hps)
        for layer, hp in zip(layers, hps):
            patched = ioi.run(lm, held, hp, replace=acts[hp])
            moved = answer_moved(patched, held, cf, attribute)
            ld = float(patched.logit_diff(held).mean())
            rows.append([attribute, str(layer), f"{moved:.3f}", f"{ld:.3f}"])
            log(f"{attribute} at {hp}: answer moved {moved:.3f}, mean LD {ld:.3f}")
    result = {
        "title": "Where IOI's attributes live in SmolLM2-135M: counterfactual patching of the "
                 "final position's residual stream",
        "command": f"{threads()} python bench/supervised_ioi.py --eval {args.eval} --sweep "
                   f"{' '.join(map(str, layers))}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load "
                   f"average {os.getloadavg()[0]:.2f} at the end",
        "notes": f"{args.eval} held-out prompts; the output of block L at the final position "
                 f"replaced by the counterfactual prompt's. answer moved: io, the new IO name's "
                 f"logit above both old names'; io_pos, S's logit above IO's. Mean LD: IO "
                 f"minus S of the original prompt after the patch.",
        "columns": ["attribute", "layer", "answer moved", "mean LD"],
        "rows": rows,
    }
    Path(args.sweep_out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"written to {args.sweep_out}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=4096, help="training prompts (all names)")
    p.add_argument("--eval", type=int, default=512, help="held-out prompts (half the names)")
    p.add_argument("--interp", type=int, default=4096,
                   help="held-out prompts (all names) for the F1 of latents")
    p.add_argument("--layers", type=int, nargs="+", default=[22, 23])
    p.add_argument("--control", nargs="+", default=["io_pos", "io"],
                   help="the attribute edited at each layer")
    p.add_argument("--n-latents", type=int, default=256)
    p.add_argument("--k", type=int, nargs="+", default=[3, 16], help="a TopK SAE per k")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-exchange", type=int, default=2)
    p.add_argument("--out", default="bench/results/supervised_ioi.json")
    p.add_argument("--sweep", type=int, nargs="*", default=None,
                   help="instead: the counterfactual patch's effect at these layers")
    p.add_argument("--sweep-out", default="bench/results/supervised_ioi_layers.json")
    args = p.parse_args()
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f} s] {msg}", flush=True)

    from saelab.models import load

    lm = load("smollm2-135m")
    names = ioi.single_token_names(lm.tokenizer)
    half = len(names) // 2
    train = ioi.make_prompts(names, args.train, seed=0)
    held = ioi.make_prompts(names, args.eval, seed=1, pool=range(half))
    cf_pool = range(half, len(names))
    log(f"SmolLM2-135M; {len(names)} names; {args.train} training prompts, {args.eval} held out; "
        f"torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}")

    clean = ioi.run(lm, held)
    acc, top = ioi.accuracy(clean, held), ioi.top_is_io(clean)
    ld = clean.logit_diff(held)
    log(f"IOI: accuracy (LD > 0) {acc:.3f}, IO is the top token {top:.3f}, mean LD {ld.mean():.3f}")
    if args.sweep:
        sweep(lm, held, cf_pool, args.sweep, args, log)
        return
    hps = [lm.layer_template.format(layer) for layer in args.layers]
    acts = ioi.final_activations(lm, train, hps)
    probe = ioi.make_prompts(names, args.interp, seed=2)
    probe_acts = ioi.final_activations(lm, probe, hps)
    log(f"captured training and {args.interp} interpretability prompts' activations")

    rows = [["(clean model)", "SmolLM2-135M-Instruct", "", "1.000", "", "", "", "", "", "", ""]]
    for layer in args.layers:
        hp = lm.layer_template.format(layer)
        rows += one_layer(lm, layer, args, train, acts[hp], held, clean, cf_pool, probe,
                          probe_acts[hp], log)
    columns = ["hookpoint", "dictionary", "FVU", "LD recovered", "FVU (labels inferred)",
               "edited", "edit accuracy", "answer moved", "F1 io", "F1 s", "F1 io_pos"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(row))
    command = f"{threads()} python bench/supervised_ioi.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "sweep", "sweep_out"))
    result = {
        "title": "Supervised dictionary vs TopK SAE on IOI (SmolLM2-135M): approximation, "
                 "control, interpretability",
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load "
                   f"average {os.getloadavg()[0]:.2f} at the end; {time.time() - start:.0f} s",
        "notes": f"IOI accuracy of SmolLM2-135M-Instruct on {args.eval} held-out prompts: "
                 f"{acc:.3f} (IO logit above S), IO the top token {top:.3f}, mean logit "
                 f"difference {ld.mean():.3f}. Residual stream at the final position; dictionaries "
                 f"fitted to {args.train} training prompts over {len(names)} names, evaluated on "
                 f"prompts over the first {half}, counterfactual IO names from the others; F1 on "
                 f"{args.interp} more held-out prompts over all names. "
                 f"TopK: {args.epochs} epochs of batch {args.batch_size}; SAE edits exchange "
                 f"{args.n_exchange} latents (cells: exchange / F1-guided).",
        "columns": columns,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
