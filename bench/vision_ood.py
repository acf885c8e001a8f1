"""Image OOD detection and label hierarchy from SAE latents on the packaged ViT-S/14 (after
"Probing the Representational Power of Sparse Autoencoders in Vision Models", 2025).

Rows are the ViT's pooled output (the final layer-normed CLS token) of each image, cached by
bench/vl_embed.py. TopK SAEs are trained on scikit-learn's digits (a random `--train` of them,
the in-distribution set; 20 epochs, batch 256). OOD: the `ood` family's scores
(saelab.evaluate.ood.ood_detection, which the `ood_images` family runs on an image store) with
statistics fitted on the training digits, AUROC of the held-out digits against the 27
scikit-image pictures, the 100 LFW faces and the 100 LFW non-face patches, each latent score
beside its raw-activation reference. Near OOD: an SAE of the same size and the statistics on
the training digits 0-4 only, AUROC of the held-out digits 0-4 against the held-out 5-9.

Hierarchy: a second SAE of the same size is trained on the training digits together with half
of the LFW images; on the held-out digits and the other LFW half, saelab.evaluate.ontology's
`hierarchy_agreement` of the class profiles (mean codes, or mean raw activations) with the tree
{digit: 0..9, photo: {face, non-face}}: Spearman correlation of profile distance with tree
distance over the 66 class pairs, and the adjusted Rand index of the top split.

`--store` also runs the `ood_images` family itself on a layer-6 store of pooled rows (capture
of `--store-images` digits for training and as many for the evaluation, then the family's OOD
images, scikit-image + LFW): slower (the ViT runs on every image).

    OMP_NUM_THREADS=1 python bench/vision_ood.py [--n-latents 768] [--k 16] [--store] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import saelab
from saelab.evaluate.ontology import hierarchy_agreement
from saelab.evaluate.ood import ood_detection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_records import merge_records  # noqa: E402
from vl_embed import digits_split, image_embeddings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vision_ood.json"
SCORES = (("reconstruction_error", "pca_error"), ("mahalanobis_codes", "mahalanobis_raw"),
          ("rare_latents", "rare_dims"))


def topk(rows: torch.Tensor, n_latents: int, k: int, epochs: int):
    sae = saelab.create("topk", d_in=rows.shape[1], n_latents=n_latents, k=k, seed=0)
    return saelab.fit(sae, rows, saelab.TrainConfig(steps=epochs * len(rows) // 256,
                                                    batch_size=256, lr=2e-3, seed=0,
                                                    progress=False))


def ood_rows(sae, fit, held, sets: dict, name: str) -> list[dict]:
    rows = []
    for ood_name, ood in sets.items():
        out = ood_detection(sae, fit, held, ood)
        row = {"rows": name, "ood": ood_name, "n_latents": sae.n_latents, "k": sae.cfg.k,
               "rows_in": out["rows_in"], "rows_ood": out["rows_ood"]}
        for latent, raw in SCORES:
            row[f"latent_{latent}"] = round(out[f"auroc_{latent}"], 4)
            row[f"raw_{raw}"] = round(out[f"auroc_{raw}"], 4)
        rows.append(row)
        print(row, flush=True)
    return rows


def store_rows(n: int, n_latents: int, k: int, epochs: int) -> list[dict]:
    """The `ood_images` family on a layer-6 pooled store of n held-out digits."""
    from saelab.models import load
    from saelab.pipeline import CaptureConfig, capture

    vit, tmp = load("vit-s14"), Path(tempfile.mkdtemp(prefix="saelab_vision_ood_"))
    hp = "encoder.layer.6"
    stores = [capture(CaptureConfig(out=str(tmp / name), model="vit-s14", dataset="digits",
                                    hookpoints=[hp], n_images=n, skip_images=skip,
                                    image_rows="pooled", progress=False), vit)
              for name, skip in (("train", 0), ("eval", n))]
    sae = saelab.create("topk", d_in=384, n_latents=n_latents, k=k, seed=0)
    sae = saelab.fit(sae, stores[0], saelab.TrainConfig(steps=epochs * n // 256, batch_size=256,
                                                        lr=2e-3, seed=0, progress=False))
    out = saelab.evaluate(sae, stores[1], metrics=("ood_images",))["ood_images"]
    row = {"rows": f"layer 6 pooled store ({n} digits), ood_images family",
           "ood": "skimage+lfw", "n_latents": n_latents, "k": k, "rows_in": out["rows_in"],
           "rows_ood": out["rows_ood"]}
    for latent, raw in SCORES:
        row[f"latent_{latent}"] = round(out[f"auroc_{latent}"], 4)
        row[f"raw_{raw}"] = round(out[f"auroc_{raw}"], 4)
    print(row, flush=True)
    return [row]


def hierarchy_rows(digits, concepts, lfw, tr, ho, n_latents, k, epochs) -> list[dict]:
    lfw_labels = ["face" if i < 100 else "non-face" for i in range(len(lfw))]
    half = torch.randperm(len(lfw), generator=torch.Generator().manual_seed(1))
    l_tr, l_ho = half[:len(lfw) // 2], half[len(lfw) // 2:]
    sae = topk(torch.cat([digits[tr], lfw[l_tr]]), n_latents, k, epochs)
    x = torch.cat([digits[ho], lfw[l_ho]])
    labels = [concepts[i] for i in ho] + [lfw_labels[i] for i in l_ho]
    paths = {str(d): ("digit", str(d)) for d in range(10)}
    paths.update({"face": ("photo", "face"), "non-face": ("photo", "non-face")})
    with torch.no_grad():
        codes = sae.encode(x)
    rows = []
    for units, feats in (("latents", codes), ("neurons (raw)", x)):
        h = hierarchy_agreement(feats, labels, paths)
        rows.append({"rows": "hierarchy: digits 0-9 + LFW face/non-face", "ood": "", "units": units,
                     "n_latents": n_latents, "k": k, "spearman": round(h.spearman, 4),
                     "cluster_ari": round(h.cluster_ari, 4), "classes": h.n_classes})
        print(rows[-1], flush=True)
    # within the digits alone there is no known taxonomy; the top split is digit vs photo
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=1200)
    p.add_argument("--n-latents", type=int, default=768)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--store", action="store_true")
    p.add_argument("--store-images", type=int, default=400)
    p.add_argument("--write", action="store_true", help=f"merge the rows into {RESULTS}")
    args = p.parse_args()
    load_before = os.getloadavg()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    digits, pictures, tr, ho = digits_split(args.train)
    lfw = image_embeddings("lfw")
    sae = topk(digits.image[tr], args.n_latents, args.k, args.epochs)
    print(f"embeddings and SAE: {time.perf_counter() - t0:.0f} s", flush=True)
    sets = {"skimage pictures": pictures.image, "lfw faces": lfw[:100],
            "lfw non-faces": lfw[100:]}
    rows = ood_rows(sae, digits.image[tr], digits.image[ho], sets, "ViT pooled output")
    # near OOD: an SAE and statistics on the training digits 0-4; held-out 0-4 against 5-9
    low = torch.tensor([int(c) < 5 for c in digits.concepts])
    tr_low, ho_low, ho_high = tr[low[tr]], ho[low[ho]], ho[~low[ho]]
    sae_low = topk(digits.image[tr_low], args.n_latents, args.k, args.epochs)
    rows += ood_rows(sae_low, digits.image[tr_low], digits.image[ho_low],
                     {"held-out digits 5-9": digits.image[ho_high]},
                     "ViT pooled output, digits 0-4 in")
    rows += hierarchy_rows(digits.image, digits.concepts, lfw, tr, ho, args.n_latents, args.k,
                           args.epochs)
    if args.store:
        rows += store_rows(args.store_images, args.n_latents, args.k, args.epochs)
    if args.write:
        meta = {"title": "Image OOD detection (digits in, scikit-image pictures and LFW out) "
                         "and label hierarchy from TopK SAE latents beside the raw activations, "
                         "packaged ViT-S/14",
                "command": "OMP_NUM_THREADS=1 python bench/vision_ood.py --store --write"}
        merge_records(RESULTS, rows, ("rows", "ood", "units", "n_latents", "k"), meta,
                      load_before)


if __name__ == "__main__":
    main()
