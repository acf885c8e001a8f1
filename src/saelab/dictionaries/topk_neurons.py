"""The top-k sparsified MLP neurons baseline (Paulo, Mallen, Juang and Belrose 2024, "Automatically
Interpreting Millions of Features in Large Language Models").

Relative to a TopK SAE: no training; the latents are the MLP's own neurons (`mlp_neurons`), and
only the k largest hidden activations of each input are kept, so the L0 is k as for a TopK SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.config import option
from saelab.dictionaries._base import check_k
from saelab.dictionaries._registry import register
from saelab.dictionaries.mlp_neurons import MlpNeurons, MlpNeuronsConfig


@dataclass
class TopKNeuronsConfig(MlpNeuronsConfig):
    k: int = option(32, "Hidden activations kept per input (the k largest by value).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)


@register("topk_neurons")
class TopKNeurons(MlpNeurons):
    """An MLP's neurons as a dictionary with only the k largest hidden activations of each input
    kept: the sparsified-neuron baseline of Paulo, Mallen, Juang and Belrose 2024 ("Automatically
    Interpreting Millions of Features in Large Language Models"), against which they scored the
    explanations of SAE latents. Ye et al. 2025 (the `mlp_neurons` paper) also evaluate a top-k
    form of the feed-forward key-value memories next to the dense one.

    Reference code: EleutherAI/delphi, `delphi/autoencoders/Neurons/__init__.py` (`TopKNeurons`,
    removed from the repository in February 2025; last at commit 3fd11fa), applied to the input
    of `mlp.down_proj`, i.e. the hidden activations `act(gate x) * (up x)`. It keeps the k
    largest values with `torch.topk` on the raw activations: largest by value, not by absolute
    value, signs kept (a SiLU-gated neuron's negative activations are kept only when fewer than
    k are positive), and no ReLU after the selection. saelab does the same. delphi's optional
    random rotation of the neuron basis is not offered.

    Everything else is `mlp_neurons`: read from a model's weights, never trained; input the MLP's
    input (hookpoint `MODULE:input`), output the MLP's output (target `MODULE`). From Python:
    `lm = saelab.models.load("smollm2-135m")`,
    `d = saelab.dictionaries.get("topk_neurons").from_model(lm, "model.layers.3.mlp", k=32)`.

    With k = n_latents it equals `mlp_neurons` exactly; with smaller k its reconstruction of the
    MLP's output loses what the dropped neurons wrote.
    """

    Config = TopKNeuronsConfig

    def encode(self, x: Tensor) -> Tensor:
        hidden = self.hidden(x)
        values, indices = hidden.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(hidden).scatter_(-1, indices, values)
