"""FAST (Li et al. 2025) on SmolLM2-135M-Instruct: chat data, block training vs whole
conversations, shuffled vs sequential order.

Three TopK SAEs at the same layer, size, k and number of steps, evaluated by FVU on held-out
chat tokens (whole conversations under the chat template, the distribution the instruct model
serves):
- bt/shuffle: block training (BT): the same chat conversations concatenated and cut into
  fixed-length blocks (a block mixes the end of one conversation with the start of the next,
  no padding), rows shuffled;
- fast/shuffle: FAST's data (one whole conversation per context), rows shuffled (the paper's
  mixing buffer shuffles activations too);
- fast/sequential: FAST's data read in store order, whole conversations per batch
  (TrainConfig(order="sequential")).

    OMP_NUM_THREADS=2 python bench/fast_order.py --out /tmp/fast_bench
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import saelab
from saelab.data.chat import capture_chat, chat_corpus
from saelab.models import load
from saelab.store import capture_to_store
from saelab.evaluate import figures


def blocks(corpus, context_len: int, separator: int):
    """BT layout of a chat corpus: conversations (padding removed) joined by `separator` and cut
    into blocks of context_len."""
    ids: list[int] = []
    for row, owner in zip(corpus.tokens, corpus.doc_ids):
        n = int((owner >= 0).sum())
        ids.extend(row[:n].tolist() + [separator])
    n = len(ids) // context_len
    return torch.tensor(ids[:n * context_len]).view(n, context_len)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/fast_bench")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--train-conversations", type=int, default=600)
    p.add_argument("--eval-conversations", type=int, default=150)
    p.add_argument("--context-len", type=int, default=256)
    p.add_argument("--n-latents", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    out = Path(args.out)
    t0 = time.time()
    lm = load("smollm2-135m")
    hp = lm.layer_template.format(args.layer)
    common = dict(batch_contexts=8, progress=False)
    n_all = args.train_conversations + args.eval_conversations
    train = capture_chat(lm, str(out / "fast_train"), [hp], args.train_conversations,
                         context_len=args.context_len, **common)
    held = capture_chat(lm, str(out / "fast_eval"), [hp], args.eval_conversations,
                        context_len=args.context_len, skip_conversations=args.train_conversations,
                        **common)
    corpus = chat_corpus("wikipedia", lm.tokenizer, args.context_len, max_conversations=n_all)
    train_part = corpus._replace(tokens=corpus.tokens[:args.train_conversations],
                                 doc_ids=corpus.doc_ids[:args.train_conversations])
    bt_tokens = blocks(train_part, args.context_len, corpus.special_ids[0])
    # the separator is a normal token of the BT stream (as in block training), so nothing but
    # the norm rule is left out
    bt = capture_to_store(lm.model, bt_tokens, [hp], out / "bt_train", model_name=lm.name,
                          special_ids=[], norm_factor=5.0, **common)
    t_cap = time.time() - t0
    rows = {"fast_train": train.n_rows, "fast_eval": held.n_rows, "bt_train": bt.n_rows,
            "excluded": {n: s.manifest["excluded_rows"] for n, s in
                         (("fast_train", train), ("fast_eval", held), ("bt_train", bt))}}
    print(json.dumps(rows), f"capture {t_cap:.0f}s", flush=True)
    steps = math.ceil(args.epochs * train.n_rows / args.batch_size)
    results = []
    for seed in args.seeds:
        for name, store, order in (("bt/shuffle", bt, "shuffle"),
                                   ("fast/shuffle", train, "shuffle"),
                                   ("fast/sequential", train, "sequential")):
            t = time.time()
            sae = saelab.create("topk", d_in=lm.d_model, n_latents=args.n_latents, k=args.k)
            cfg = saelab.TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr,
                                     seed=seed, order=order, progress=False,
                                     dead_after_tokens=min(2_000_000, store.n_rows))
            sae = saelab.fit(sae, store, cfg)
            rep = figures(saelab.evaluate(sae, held))
            r = {"run": name, "seed": seed, "steps": steps, "fvu": rep["fvu"], "l0": rep["l0"],
                 "dead_fraction": rep.get("dead_fraction"), "train_s": round(time.time() - t, 1)}
            results.append(r)
            print(json.dumps(r), flush=True)
    report = {"args": vars(args), "rows": rows, "capture_s": round(t_cap, 1), "results": results,
              "torch_threads": torch.get_num_threads()}
    (out / "fast_report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
