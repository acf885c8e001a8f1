"""The evaluation report: report.json plus PNG plots (L0 histogram, feature density)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from saelab._paths import atomic_path, write_json


def write_report(out: str | Path, report: dict, l0: torch.Tensor | None = None,
                 frequencies: torch.Tensor | None = None) -> Path:
    """Write `report.json` (and plots when the per-input L0s / per-latent frequencies are
    given) into the folder `out`; returns the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    if l0 is not None and l0.numel():
        _hist(out / "l0_hist.png", l0.float().numpy(), "active latents per input (L0)",
              "inputs", bins=min(60, int(l0.max()) + 1))
    if frequencies is not None:
        live = frequencies[frequencies > 0]
        if live.numel():
            _hist(out / "density_hist.png", torch.log10(live.float()).numpy(),
                  f"log10 firing frequency ({int((frequencies == 0).sum())} dead latents "
                  f"not shown)", "latents", bins=50)
    return out / "report.json"


def _hist(path: Path, values, xlabel: str, ylabel: str, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=max(1, bins), color="#3b6ea8")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def format_report(report: dict) -> str:
    """A short human-readable table of the headline numbers."""
    keys = ["fvu", "l0", "dead_fraction", "dense_fraction", "cosine", "ce_loss_clean",
            "ce_loss_spliced", "ce_loss_ablated", "ce_loss_mean_ablated", "ce_loss_recovered",
            "ce_loss_recovered_vs_mean", "kl_spliced"]
    lines = []
    for k in keys:
        v = report.get(k)
        if isinstance(v, float) and not math.isnan(v):
            lines.append(f"  {k:<28} {v:.4f}")
    return "\n".join(lines)
