"""Feature transfer from SmolLM2-135M to Gemma 3 270M by model stitching (Chen et al. 2025,
"Transferring Linear Features Across Language Models With Model Stitching").

    OMP_NUM_THREADS=1 .venv/bin/python bench/transfer_smollm2_gemma.py [--rows 100000]

1. Both models read the same packaged Wikipedia summaries (128 tokens each); their residual
   streams (SmolLM2 after block 15 of 30, Gemma after block 9 of 18) are paired at tokens that
   end at the same character offset; affine maps are fitted both ways on 80% of the documents,
   held-out R^2 and cosine on the rest.
2. A TopK SAE trained on SmolLM2's rows is transferred to Gemma through the maps, and compared on
   Gemma's held-out rows (FVU, and spliced next-token CE on held-out Gemma contexts) with a random
   SAE (random unit rows, decoder bias at the data mean) and an SAE trained on Gemma's own rows.
3. Transfer-initialisation savings: Gemma SAEs trained from the transferred SAE and from scratch
   (2 seeds each, same data and schedule); the tokens the transferred start needs to reach the
   scratch run's final training FVU. Curves: docs/benchmarks/img/transfer_init.png.
4. Which features transfer: per-latent correlation of the SmolLM2 latent (on SmolLM2's stream)
   and its transfer (on Gemma's) over held-out aligned positions; best and worst with their top
   tokens; structural (top tokens without letters) vs semantic latents.
5. A topic probe (the two topics of the documents read, on document-mean rows) fitted on
   SmolLM2 and transferred to Gemma, against a probe fitted on Gemma.
6. A topic steering vector (difference of the topics' means) of SmolLM2 transferred to Gemma,
   against Gemma's own and a random one: the shift of Gemma's loss between the two topics.

Stages are cached under $SAELAB_CACHE/bench/transfer (a rerun reuses the paired rows and the
trained SAEs). Writes bench/results/transfer_{stitch,sae,init,features,steer}.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import saelab
from saelab._paths import cache_dir
from saelab.capture.patch import patch
from saelab.capture.exclude import Exclusion
from saelab.data import pack, read_documents
from saelab.evaluate import spliced_loss
from saelab.models import load
from saelab.transfer import (agreement, fit_stitch, init_for_training, kind_of, maps_from,
                             paired_activations, transfer_dictionary, transfer_direction,
                             transfer_probe, Probe)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "benchmarks" / "img" / "transfer_init.png"
HP_A, HP_B = "model.layers.15", "model.layers.9"
N_LATENTS, K = 4096, 32
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python bench/transfer_smollm2_gemma.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000, help="aligned rows to collect")
    ap.add_argument("--docs", type=int, default=3000, help="documents read at most")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--splice-contexts", type=int, default=16)
    ap.add_argument("--probe-only", action="store_true",
                    help="rerun only the probe (cached rows) and replace its row")
    ap.add_argument("--steer-only", action="store_true",
                    help="run only the steering-vector stage (cached rows)")
    args = ap.parse_args()
    torch.manual_seed(0)
    start, stamp = time.time(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    work = cache_dir() / "bench" / "transfer"
    work.mkdir(parents=True, exist_ok=True)
    lm_a, lm_b = load("smollm2-135m"), load("gemma3-270m")
    docs = read_documents("wikipedia", limit=args.docs)
    pairs = paired(work, lm_a, lm_b, docs, args.rows)
    stitch = fit_stitch(pairs["x_a"], pairs["x_b"], pairs["doc"], ridge=0.0, info={
        "model_a": "smollm2-135m", "hookpoint_a": HP_A, "model_b": "gemma3-270m",
        "hookpoint_b": HP_B, "counts": pairs["counts"]})
    ridges = {r: fit_stitch(pairs["x_a"], pairs["x_b"], pairs["doc"], ridge=r).figures()
              for r in (1e-3, 1e-1)}
    cut = torch.unique(pairs["doc"])[round(len(torch.unique(pairs["doc"])) * 0.8)]
    train, test = pairs["doc"] < cut, pairs["doc"] >= cut
    heldout_docs = [docs[i] for i in sorted(set(pairs["doc"][test].tolist()))]
    print(f"stitch: {json.dumps(stitch.figures())}; ridge sweep {json.dumps(ridges)}",
          flush=True)
    if args.probe_only:
        data = json.loads((RESULTS / "transfer_sae.json").read_text())
        data["rows"] = [r for r in data["rows"] if not r[0].startswith("(probe")]
        (RESULTS / "transfer_sae.json").write_text(json.dumps(data, indent=1) + "\n")
        extend(RESULTS / "transfer_sae.json", topic_probe(pairs, docs, stitch))
        return
    if args.steer_only:
        steering(pairs, docs, stitch, lm_b, stamp, start, COMMAND + " --steer-only")
        return
    write_stitch(stitch, ridges, pairs["counts"], stamp, start)

    xa_tr, xb_tr, xa_te, xb_te = (pairs["x_a"][train], pairs["x_b"][train],
                                  pairs["x_a"][test], pairs["x_b"][test])
    scale_b = 1 / math.sqrt(float(xb_tr.pow(2).sum(1).mean()))
    sae_a = trained(work / "smollm2_sae", xa_tr, None, seed=0, args=args)
    up, down = maps_from(stitch, "a")
    transferred = transfer_dictionary(sae_a, up, down, {"model": "gemma3-270m",
                                                        "hookpoint": HP_B})
    random_sae = saelab.create("topk", d_in=xb_tr.shape[1], n_latents=N_LATENTS, k=K, seed=0)
    with torch.no_grad():
        random_sae.b_dec.copy_(xb_tr.mean(0))
    curves, finals = {}, {}
    for seed in (0, 1):
        for name in ("scratch", "transfer"):
            init = None
            if name == "transfer":
                init = transfer_dictionary(sae_a, up, down)
                init_for_training(init)
                init.fold_input_scale(1 / scale_b)  # into the units of the scaled rows
            run = work / f"gemma_{name}_{seed}"
            finals[(name, seed)] = trained(run, xb_tr * scale_b, init, seed=seed, args=args,
                                           prescaled=scale_b)
            curves[(name, seed)] = read_curve(run / "metrics.jsonl")
    native = finals[("scratch", 0)]
    tokens = pack(heldout_docs, lm_b.tokenizer, context_len=128,
                  max_contexts=args.splice_contexts).tokens
    exclusion = Exclusion(special_ids=list(lm_b.tokenizer.all_special_ids),
                          norm_threshold={HP_B: 5 * float(xb_tr.norm(dim=1).median())})
    mean_b = xb_tr.mean(0)
    rows = []
    for label, sae in (("random SAE (decoder bias at the data mean)", random_sae),
                       ("SmolLM2 SAE transferred (no training on Gemma)", transferred),
                       ("Gemma SAE trained from scratch (seed 0)", native),
                       ("Gemma SAE from the transferred init (seed 0)",
                        finals[("transfer", 0)])):
        fvu = float(saelab.evaluate(sae, xb_te, metrics=["reconstruction"])["reconstruction"]
                    ["fvu"])
        ce = spliced_loss(lm_b.model, tokens, HP_B, sae, exclusion=exclusion, mean=mean_b)
        rows.append([label, f"{fvu:.4f}", f"{ce['ce_loss_spliced']:.4f}",
                     f"{ce['ce_loss_recovered_vs_mean']:.3f}"])
        print(rows[-1], f"clean {ce['ce_loss_clean']:.4f}", flush=True)
    fvu_a = float(saelab.evaluate(sae_a, xa_te, metrics=["reconstruction"])["reconstruction"]
                  ["fvu"])
    write_sae(rows, ce, fvu_a, tokens, stamp, start, args)
    write_init(curves, finals, xb_te, scale_b, stamp, start, args)
    write_features(sae_a, transferred, xa_te, xb_te, pairs["ids_a"][test], lm_a.tokenizer,
                   stamp, start)
    probe_rows = topic_probe(pairs, docs, stitch)
    extend(RESULTS / "transfer_sae.json", probe_rows)
    steering(pairs, docs, stitch, lm_b, stamp, start)
    print(f"done in {time.time() - start:.0f} s", flush=True)


def paired(work: Path, lm_a, lm_b, docs, rows: int) -> dict:
    """The aligned rows, from the cache when the same size was collected before."""
    file, meta = work / f"paired_{rows}.safetensors", work / f"paired_{rows}.json"
    if file.is_file() and meta.is_file():
        return {**load_file(str(file)), "counts": json.loads(meta.read_text())}
    t = time.time()
    p = paired_activations(lm_a, HP_A, lm_b, HP_B, docs, max_tokens=128, batch_size=8,
                           max_rows=rows, progress=True)
    counts = {**p.counts, "seconds": round(time.time() - t), "documents":
              int(p.doc.max()) + 1}
    save_file({"x_a": p.x_a, "x_b": p.x_b, "doc": p.doc, "ids_a": p.ids_a, "ids_b": p.ids_b},
              str(file))
    meta.write_text(json.dumps(counts))
    return {"x_a": p.x_a, "x_b": p.x_b, "doc": p.doc, "ids_a": p.ids_a, "ids_b": p.ids_b,
            "counts": counts}


def trained(out: Path, x: torch.Tensor, init, seed: int, args, prescaled: float | None = None):
    """A TopK SAE trained on x (cached in `out`); `prescaled`: x was scaled by this factor (the
    returned SAE is folded back to raw units)."""
    if (out / "sae" / "cfg.json").is_file():
        sae = saelab.load(out / "sae")
    else:
        sae = init if init is not None else saelab.create("topk", d_in=x.shape[1],
                                                           n_latents=N_LATENTS, k=K, seed=seed)
        cfg = saelab.TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=2e-3, seed=seed,
                                 out=str(out), log_every=10, checkpoint_every=100_000,
                                 normalize=prescaled is None, init_b_dec=init is None,
                                 progress=False, overwrite=True)
        t = time.time()
        sae = saelab.fit(sae, x, cfg)
        print(f"trained {out.name} in {time.time() - t:.0f} s", flush=True)
    if prescaled is not None and not sae.provenance.get("bench_unscaled"):
        sae.fold_input_scale(prescaled)
        sae.provenance["bench_unscaled"] = True
        sae.save(out / "sae")
    return sae


def read_curve(file: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return [(r["tokens"], r["fvu"]) for r in rows if "fvu" in r]


def smooth(curve: list[tuple[int, float]], window: int = 5) -> list[tuple[int, float]]:
    out = []
    for i in range(len(curve)):
        part = curve[max(0, i - window + 1):i + 1]
        out.append((curve[i][0], sum(v for _, v in part) / len(part)))
    return out


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((t for t, v in smooth(curve) if v <= target), None)


def result(name: str, title: str, columns, rows, stamp: str, start: float, notes: str,
           command: str = COMMAND) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps({
        "title": title, "command": command, "date": stamp,
        "machine": f"the project's 2-core CPU machine shared with other jobs, torch "
                   f"{torch.__version__}, 1 thread; {time.time() - start:.0f} s so far",
        "notes": notes, "columns": columns, "rows": rows}, indent=1) + "\n")


def extend(path: Path, rows: list[list[str]]) -> None:
    data = json.loads(path.read_text())
    data["rows"] += rows
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_stitch(stitch, ridges, counts, stamp, start) -> None:
    f = stitch.figures()
    rows = [["SmolLM2 L15 -> Gemma L9", "0", f"{f['a_to_b']['r2']:.4f}",
             f"{f['a_to_b']['cosine']:.4f}", str(f["a_to_b"]["rows"])],
            ["Gemma L9 -> SmolLM2 L15", "0", f"{f['b_to_a']['r2']:.4f}",
             f"{f['b_to_a']['cosine']:.4f}", str(f["b_to_a"]["rows"])]]
    for r, fr in ridges.items():
        rows += [["SmolLM2 L15 -> Gemma L9", f"{r:g}", f"{fr['a_to_b']['r2']:.4f}",
                  f"{fr['a_to_b']['cosine']:.4f}", str(fr["a_to_b"]["rows"])],
                 ["Gemma L9 -> SmolLM2 L15", f"{r:g}", f"{fr['b_to_a']['r2']:.4f}",
                  f"{fr['b_to_a']['cosine']:.4f}", str(fr["b_to_a"]["rows"])]]
    result("transfer_stitch.json", "Affine maps between SmolLM2 and Gemma 3 270M: held-out "
           "R^2 both ways", ["direction", "ridge", "held-out R^2", "held-out cosine",
                             "held-out rows"], rows, stamp, start,
           f"Packaged Wikipedia summaries, 128 tokens per document and model. "
           f"{counts['documents']} documents: {counts['tokens_a']:,} SmolLM2 tokens and "
           f"{counts['tokens_b']:,} Gemma tokens; {counts['aligned']:,} positions end at the same "
           f"character offset; {counts['kept']:,} kept after leaving out the first position, "
           f"special tokens and rows above 5x the median norm (capture {counts['seconds']} s). "
           f"Maps fitted on the first 80% of the documents, measured on the rest.")


def write_sae(rows, ce, fvu_a, tokens, stamp, start, args) -> None:
    rows = rows + [["(reference) the SmolLM2 SAE on SmolLM2's own held-out rows",
                    f"{fvu_a:.4f}", "", ""],
                   ["(reference) Gemma clean / mean-ablated at layer 9", "",
                    f"{ce['ce_loss_clean']:.4f} / {ce['ce_loss_mean_ablated']:.4f}", ""]]
    result("transfer_sae.json", "A SmolLM2 SAE transferred to Gemma 3 270M against a random "
           "and a native Gemma SAE", ["dictionary on Gemma layer 9", "FVU (held-out rows)",
                                      "spliced CE (nats/token)", "CE recovered vs mean-ablation"],
           rows, stamp, start,
           f"TopK SAEs, {N_LATENTS} latents, k {K}, {args.epochs:g} epochs over the training "
           f"rows at batch {args.batch}, lr 2e-3. The SmolLM2 SAE (layer 15) is carried to Gemma "
           f"by folding the two affine maps into its weights (no training on Gemma). Spliced CE "
           f"on {tokens.numel():,} tokens of held-out documents ({tokens.shape[0]} contexts of "
           f"128), first position, special tokens and rows above 5x the median norm left "
           f"untouched.")


def write_init(curves, finals, xb_te, scale_b, stamp, start, args) -> None:
    rows = []
    fig_rows = {}
    for seed in (0, 1):
        scratch, transfer = curves[("scratch", seed)], curves[("transfer", seed)]
        target = smooth(scratch)[-1][1]
        need = tokens_to_reach(transfer, target)
        total = scratch[-1][0]
        fvu = {n: float(saelab.evaluate(finals[(n, seed)], xb_te, metrics=["reconstruction"])
                        ["reconstruction"]["fvu"]) for n in ("scratch", "transfer")}
        rows.append([str(seed), f"{target:.4f}", f"{total:,}",
                     f"{need:,}" if need is not None else "not reached",
                     f"{1 - need / total:.0%}" if need is not None else "",
                     f"{fvu['scratch']:.4f}", f"{fvu['transfer']:.4f}"])
        fig_rows[seed] = (scratch, transfer)
    plot(curves)
    result("transfer_init.json", "Gemma SAEs from the transferred SmolLM2 SAE vs from scratch",
           ["seed", "scratch final training FVU (mean of last 5 logs)", "scratch tokens",
            "tokens the transferred init needs to reach it", "saved", "held-out FVU scratch",
            "held-out FVU transferred init"], rows, stamp, start,
           f"Same rows (scaled to unit mean squared norm), schedule, lr 2e-3, batch {args.batch}, "
           f"{args.epochs:g} epochs, seeds 0 and 1 (data order and the scratch run's "
           f"initialisation). The transferred init has unit-norm decoder rows (norms moved into "
           f"the encoder). The SmolLM2 SAE's own training is not counted. Training FVU logged "
           f"every 10 steps, smoothed over 5 logs. Curves: docs/benchmarks/img/transfer_init.png.")


def plot(curves) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (name, seed), curve in sorted(curves.items()):
        c = smooth(curve)
        ax.plot([t / 1e3 for t, _ in c], [v for _, v in c], color="C1" if name == "transfer"
                else "C0", linestyle="-" if seed == 0 else "--",
                label=f"{'transferred init' if name == 'transfer' else 'scratch'}, seed {seed}")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("training FVU (smoothed)")
    ax.set_yscale("log")
    ax.set_title("Gemma 3 270M layer 9 TopK SAE: transferred init vs scratch")
    ax.legend()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def write_features(sae_a, transferred, xa_te, xb_te, ids_a, tokenizer, stamp, start) -> None:
    agree = agreement(sae_a, transferred, xa_te, xb_te, top=8)
    alive = (agree.frequency_source >= 1e-3) & torch.isfinite(agree.correlation)
    order = torch.argsort(agree.correlation.nan_to_num(-2), descending=True)
    order = [int(i) for i in order if alive[i]]

    def tokens_of(i: int) -> list[str]:
        return [tokenizer.decode([int(ids_a[r])]) for r in agree.top_rows[i]]

    kinds = {i: kind_of(tokens_of(i)) for i in order}
    rows = []
    for label, pick in (("best", order[:8]), ("worst", order[-8:])):
        for i in pick:
            rows.append([label, str(i), f"{float(agree.correlation[i]):.3f}",
                         f"{float(agree.frequency_source[i]):.2%}",
                         f"{float(agree.frequency_target[i]):.2%}", kinds[i],
                         " ".join(repr(t) for t in tokens_of(i)[:6])])
    for kind in ("semantic", "structural"):
        cs = torch.tensor([float(agree.correlation[i]) for i in order if kinds[i] == kind])
        if len(cs):
            rows.append([f"all {kind}", str(len(cs)), f"{float(cs.mean()):.3f} (median "
                         f"{float(cs.median()):.3f})", "", "", kind, ""])
    result("transfer_features.json", "Which SmolLM2 features transfer to Gemma 3 270M",
           ["group", "latent (or count)", "correlation", "fires on SmolLM2", "fires on Gemma",
            "kind", "top tokens (SmolLM2)"], rows, stamp, start,
           f"Per-latent Pearson correlation, over {xa_te.shape[0]:,} held-out aligned "
           f"positions, of the SmolLM2 latent's code on SmolLM2's stream and the transferred "
           f"latent's code on Gemma's; latents firing on at least 0.1% of positions "
           f"({len(order)} of {sae_a.n_latents}). Kind: structural when most of the 8 top "
           f"tokens hold no letter.")


def topic_probe(pairs, docs, stitch) -> list[list[str]]:
    """The two topics of the documents read ('Arts' vs 'Biology and health sciences') on
    document-mean rows, documents split at random (seeded, 30% held out): a probe fitted on
    SmolLM2, the same probe transferred to Gemma through the map down, one fitted on Gemma."""
    from sklearn.linear_model import LogisticRegression

    doc = pairs["doc"]
    ids = sorted(set(doc.tolist()))
    labels = [docs[i].label for i in ids]
    topic = max(set(labels), key=labels.count)
    index = {d: j for j, d in enumerate(ids)}
    rows_j = torch.tensor([index[int(d)] for d in doc])

    def pooled(x):
        out = torch.zeros(len(ids), x.shape[1]).index_add_(0, rows_j, x)
        return out / torch.bincount(rows_j, minlength=len(ids)).clamp_min(1)[:, None]

    pa, pb = pooled(pairs["x_a"]), pooled(pairs["x_b"])
    y = torch.tensor([lab == topic for lab in labels]).long()
    g = torch.Generator().manual_seed(0)
    is_tr = torch.rand(len(ids), generator=g) >= 0.3
    te = ~is_tr
    mu_a, sd_a = pa[is_tr].mean(0), pa[is_tr].std(0) + 1e-6
    mu_b, sd_b = pb[is_tr].mean(0), pb[is_tr].std(0) + 1e-6
    clf_a = LogisticRegression(max_iter=2000, C=0.1).fit(((pa - mu_a) / sd_a)[is_tr], y[is_tr])
    clf_b = LogisticRegression(max_iter=2000, C=0.1).fit(((pb - mu_b) / sd_b)[is_tr], y[is_tr])
    w = torch.tensor(clf_a.coef_, dtype=torch.float32) / sd_a  # raw units: w . x + b
    b = torch.tensor(clf_a.intercept_, dtype=torch.float32) - w @ mu_a
    moved = transfer_probe(Probe(w, b), stitch.b_to_a)

    def acc(logits):
        return float(((logits.reshape(-1) > 0).long() == y[te]).float().mean())

    other = next(lab for lab in labels if lab != topic)
    majority = max(float(y[te].float().mean()), 1 - float(y[te].float().mean()))
    return [[f"(probe, '{topic}' vs '{other}', {int(te.sum())} held-out documents) accuracy: "
             f"SmolLM2 probe on SmolLM2 / transferred to Gemma / fitted on Gemma / majority",
             "", f"{acc(pa[te] @ w.T + b):.3f} / {acc(pb[te] @ moved.weight.T + moved.bias):.3f}"
             f" / {acc(torch.tensor(clf_b.decision_function(((pb - mu_b) / sd_b)[te]))):.3f}"
             f" / {majority:.3f}", ""]]


def steering(pairs, docs, stitch, lm_b, stamp, start, command: str = COMMAND,
             contexts: int = 8) -> None:
    """A topic steering vector (mean of 'Biology and health sciences' rows minus mean of 'Arts'
    rows, on 70% of the documents) of SmolLM2, transferred to Gemma (the map's linear part),
    against Gemma's own vector and a random one of the same norm: added at every position of
    Gemma's layer 9, how much more the model prefers held-out biology text over held-out arts
    text (next-token CE change on arts minus that on biology, nats/token)."""
    doc = pairs["doc"]
    ids = sorted(set(doc.tolist()))
    g = torch.Generator().manual_seed(1)
    held = {d for d, r in zip(ids, torch.rand(len(ids), generator=g)) if r < 0.3}
    topic = {d: docs[d].label for d in ids}
    arts, bio = "Arts", "Biology and health sciences"

    def diff(x):
        rows = torch.tensor([int(d) not in held for d in doc])
        is_bio = torch.tensor([topic[int(d)] == bio for d in doc])
        return x[rows & is_bio].mean(0) - x[rows & ~is_bio].mean(0)

    v_a, v_b = diff(pairs["x_a"]), diff(pairs["x_b"])
    v_t = transfer_direction(v_a, stitch.a_to_b)
    g = torch.Generator().manual_seed(2)
    v_r = torch.randn(v_b.shape, generator=g)
    v_r = v_r / v_r.norm() * v_b.norm()
    texts = {name: pack([docs[d] for d in sorted(held) if topic[d] == name], lm_b.tokenizer,
                        context_len=128, max_contexts=contexts).tokens for name in (arts, bio)}
    rows = []
    clean = {name: ce_of(lm_b.model, t, None) for name, t in texts.items()}
    for label, v in (("Gemma's own vector", v_b), ("SmolLM2's vector, transferred", v_t),
                     ("random vector, same norm as Gemma's", v_r)):
        ce = {name: ce_of(lm_b.model, t, v) for name, t in texts.items()}
        shift = (ce[arts] - clean[arts]) - (ce[bio] - clean[bio])
        cos = float(torch.nn.functional.cosine_similarity(v, v_b, dim=0))
        rows.append([label, f"{cos:.3f}", f"{float(v.norm() / v_b.norm()):.2f}",
                     f"{ce[arts] - clean[arts]:+.3f}", f"{ce[bio] - clean[bio]:+.3f}",
                     f"{shift:+.3f}"])
        print(rows[-1], flush=True)
    result("transfer_steer.json", "A topic steering vector of SmolLM2 transferred to Gemma 3 "
           "270M", ["vector added at Gemma layer 9", "cosine with Gemma's own",
                    "norm / Gemma's own", "CE change on arts text", "CE change on biology text",
                    "preference for biology (arts change - biology change)"], rows, stamp,
           start, f"Vector: mean of the 'Biology and health sciences' rows minus mean of the "
           f"'Arts' rows over 70% of the 1,081 documents (seeded split), SmolLM2 layer 15 (carried "
           f"by the map's linear part) or Gemma layer 9; added at every position but the first. "
           f"Next-token CE on {contexts} contexts of 128 Gemma tokens of each topic's held-out "
           f"documents; clean CE {clean[arts]:.3f} (arts) and {clean[bio]:.3f} (biology).",
           command)


@torch.no_grad()
def ce_of(model, tokens: torch.Tensor, vector: torch.Tensor | None) -> float:
    """Mean next-token CE of `tokens` with `vector` added at HP_B (positions 1..)."""
    def add(act):
        act = act.clone()
        act[:, 1:] += vector.to(act)
        return act

    total = count = 0.0
    for start in range(0, tokens.shape[0], 4):
        batch = tokens[start:start + 4]
        if vector is None:
            logits = model(input_ids=batch).logits
        else:
            with patch(model, HP_B, add):
                logits = model(input_ids=batch).logits
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                               batch[:, 1:].flatten(), reduction="sum")
        total, count = total + float(ce), count + batch[:, 1:].numel()
    return total / count


if __name__ == "__main__":
    main()
