"""The MLP's own neurons as a dictionary (Ye, Suzuki, Inaba and Kuribayashi 2025, "Transformer
Key-Value Memories Are Nearly as Interpretable as Sparse Autoencoders", NeurIPS 2025).

Relative to a TopK SAE, nothing is learned: the feed-forward layer is read as key-value memories
(Geva et al. 2021), its hidden activations are the codes and its output projection's columns the
atoms, so the "dictionary" is the layer itself, exact by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.capture import Hookpoint
from saelab.config import build, check, option
from saelab.dictionaries._base import Dictionary, DictionaryConfig
from saelab.dictionaries._registry import register
from saelab.errors import ConfigError
from saelab.ops import linear


def _gelu_tanh_formula(x: Tensor) -> Tensor:
    """The tanh approximation of GELU written out (transformers' "gelu_new", GPT-2)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": _gelu_tanh_formula,
    "relu": F.relu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}
"""Activation functions by the name transformers gives them in a model's `hidden_act`."""

GATED_LAYOUT = ("gate_proj", "up_proj", "down_proj", "act_fn")
"""Submodule names of a gated MLP (Llama, Mistral, Qwen, Gemma, SmolLM2)."""
PLAIN_LAYOUTS = (("c_fc", "c_proj", "act"),                   # GPT-2 (Conv1D weights)
                 ("dense_h_to_4h", "dense_4h_to_h", "act"),   # GPT-NeoX, Pythia
                 ("fc_in", "fc_out", "act"),                  # GPT-J
                 ("fc1", "fc2", "activation_fn"))             # Phi
"""Submodule names (input projection, output projection, activation) of plain MLPs."""


@dataclass
class MlpNeuronsConfig(DictionaryConfig):
    activation: Literal["silu", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu",
                        "quick_gelu"] = option(
        "silu", "The MLP's activation function, by transformers' name for it (read from the "
                "model by from_model).")
    gated: bool = option(True, "Gated MLP (act(gate x) * (up x), Llama/SmolLM2) or plain "
                               "(act(W_in x + b_in)).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.activation in ACTIVATIONS, "activation",
              f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")


class MlpWeights(NamedTuple):
    """The weights of one MLP module, in the dictionary's layout."""

    W_enc: Tensor
    """Input (up) projection [n_neurons, d_in]."""
    b_enc: Tensor
    """Its bias [n_neurons] (zeros when the module has none)."""
    W_dec: Tensor
    """Output projection's columns as rows [n_neurons, d_out]: neuron i's value vector."""
    b_dec: Tensor
    """Output bias [d_out] (zeros when the module has none)."""
    W_gate: Tensor | None
    """Gate projection [n_neurons, d_in] of a gated MLP; None for a plain one."""
    b_gate: Tensor | None
    """Its bias [n_neurons]; None for a plain MLP."""
    activation: str
    """Name of the activation function (a key of ACTIVATIONS)."""


@register("mlp_neurons")
class MlpNeurons(Dictionary):
    """A transformer MLP's own neurons read as a dictionary: the codes are the hidden activations
    and the atoms the output projection's columns (Ye, Suzuki, Inaba and Kuribayashi 2025,
    "Transformer Key-Value Memories Are Nearly as Interpretable as Sparse Autoencoders",
    NeurIPS 2025; the feed-forward layer as key-value memories of Geva et al. 2021).

    For a gated MLP (Llama, Mistral, Qwen, Gemma, SmolLM2) the codes are
    `act(W_gate x + b_gate) * (W_enc x + b_enc)` and for a plain one (GPT-2, Pythia, GPT-J, Phi)
    `act(W_enc x + b_enc)`; the output is `codes @ W_dec + b_dec` with `W_dec` = the output
    projection's weight transposed (`down_proj.weight.T`). So `decode(encode(x))` is the MLP's
    output for its input x, to float precision: the dictionary is exact, with as many latents as
    the MLP has neurons (1,536 for SmolLM2-135M) and codes that are dense (SiLU is rarely exactly
    0). The authors' code is at github.com/muyo8692/ff-kv-sae (not readable here); this follows
    the paper's equations.

    It reads the MLP's input and outputs the MLP's output, like a transcoder: its hookpoint is
    `MODULE:input` and its target `MODULE` (`needs` holds "target"; `from_model` records both in
    the provenance, as `hookpoint` and `data_target_hookpoint`, so `saelab eval` compares the
    output with the captured MLP output and splices it there). Capture both sites to evaluate
    it: `saelab capture --hookpoints model.layers.3.mlp:input model.layers.3.mlp` (SmolLM2).

    Build it from a loaded model (it is never trained: `saelab.fit` and `saelab train` refuse it),
    save it, and use it wherever a dictionary goes (`saelab eval runs/mlp_neurons_l3 STORE`):
    `lm = saelab.models.load("smollm2-135m")`,
    `neurons = saelab.dictionaries.get("mlp_neurons").from_model(lm, "model.layers.3.mlp")`,
    `neurons.save("runs/mlp_neurons_l3")`.

    `saelab.create("mlp_neurons", d_in, n_latents)` makes one with random weights (the shape of
    an MLP, for tests). Weights: W_enc, b_enc [n_latents, d_in], [n_latents]; W_gate, b_gate
    (gated only); W_dec [n_latents, d_out], b_dec [d_out]. The activation is stored by name
    (`activation`), so a saved one encodes exactly as the model does.
    """

    Config = MlpNeuronsConfig
    trained_by = "model"
    needs: ClassVar[frozenset[str]] = frozenset({"target"})
    """Its output is the MLP's output, not its input: evaluation compares it with that target."""
    unit_norm_decoder = False
    scales_with_input = ()

    def __init__(self, cfg: MlpNeuronsConfig):
        super().__init__(cfg)
        n, d_in, d_out = cfg.n_latents, cfg.d_in, cfg.d_out
        # random weights of an MLP's shape (nn.Linear's initialisation); from_model overwrites
        self.W_enc = nn.Parameter(_uniform(n, d_in))
        self.b_enc = nn.Parameter(torch.zeros(n))
        if cfg.gated:
            self.W_gate = nn.Parameter(_uniform(n, d_in))
            self.b_gate = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(_uniform(d_out, n).t().contiguous())
        self.b_dec = nn.Parameter(torch.zeros(d_out))

    def hidden(self, x: Tensor) -> Tensor:
        """The MLP's hidden activations [B, n_latents] for its inputs x [B, d_in]."""
        act = ACTIVATIONS[self.cfg.activation]
        up = linear(x, self.W_enc, self.b_enc)
        if self.cfg.gated:
            return act(linear(x, self.W_gate, self.b_gate)) * up
        return act(up)

    def encode(self, x: Tensor) -> Tensor:
        return self.hidden(x)

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: Any, hookpoint: str, **fields: Any) -> "MlpNeurons":
        """The dictionary of the MLP module named by `hookpoint` (e.g. "model.layers.3.mlp",
        with or without ":input") of `model` (a `saelab.models.LoadedModel` or an nn.Module).
        `fields` are further config fields of the variant (e.g. k for topk_neurons)."""
        module_name = mlp_module_name(hookpoint)
        net = getattr(model, "model", model) if hasattr(model, "layer_template") else model
        module = dict(net.named_modules()).get(module_name)
        if module is None:
            close = [n for n, _ in net.named_modules() if n.endswith(".mlp")][:4]
            raise ConfigError(f"the model has no module {module_name!r}"
                              + (f"; MLP modules are named like {', '.join(close)}" if close
                                 else "") + ". List them with `saelab hookpoints MODEL`.")
        weights = read_mlp(module, module_name)
        n, d_in = weights.W_enc.shape
        with torch.random.fork_rng(devices=[]):  # the placeholder weights leave no trace
            dictionary = cls(build(cls.Config, {"d_in": d_in, "n_latents": n,
                                                "d_out": weights.W_dec.shape[1],
                                                "activation": weights.activation,
                                                "gated": weights.W_gate is not None,
                                                **fields},
                                   what=f"architecture {cls.architecture!r}"))
        dictionary.to(weights.W_enc.device, weights.W_enc.dtype)
        for name, tensor in weights._asdict().items():
            if isinstance(tensor, Tensor):
                getattr(dictionary, name).copy_(tensor)
        dictionary.provenance.update(_provenance(model, module_name))
        return dictionary


def _uniform(n_out: int, n_in: int) -> Tensor:
    """nn.Linear's default initialisation of an [n_out, n_in] weight."""
    bound = 1 / math.sqrt(n_in)
    return torch.empty(n_out, n_in).uniform_(-bound, bound)


def _provenance(model: Any, module_name: str) -> dict[str, Any]:
    """Where the dictionary came from: the model, the MLP's input (read) and output (target)."""
    name = getattr(model, "name", None) or getattr(getattr(model, "config", None),
                                                  "_name_or_path", None)
    return {"model": name, "hookpoint": f"{module_name}:input",
            "data_target_hookpoint": module_name, "read_from": f"weights of {module_name}"}


def mlp_module_name(hookpoint: str) -> str:
    """The module name of an MLP hookpoint: "model.layers.3.mlp" or "model.layers.3.mlp:input"
    (the dictionary reads the input and predicts the output of that module either way)."""
    hp = Hookpoint.parse(hookpoint)
    if hp.site not in ("input", "output"):
        raise ConfigError(f"mlp_neurons reads an MLP module (its input, predicting its output); "
                          f"got site {hp.site!r} in {hookpoint!r}: name the module, e.g. "
                          f"'model.layers.3.mlp'")
    return hp.module


def read_mlp(module: nn.Module, name: str = "the module") -> MlpWeights:
    """The weights of an MLP module in the dictionary's layout (gated or plain, see
    GATED_LAYOUT and PLAIN_LAYOUTS); a ConfigError when the module is not an MLP saelab knows."""
    children = dict(module.named_children())
    if all(hasattr(module, a) for a in GATED_LAYOUT):
        gate, up, down = (children[a] for a in GATED_LAYOUT[:3])
        W_gate, b_gate = _in_weight(gate)
        W_enc, b_enc = _in_weight(up)
        W_dec, b_dec = _out_weight(down)
        return MlpWeights(W_enc, b_enc, W_dec, b_dec, W_gate, b_gate,
                          activation_name(module.act_fn))
    for w_in, w_out, act in PLAIN_LAYOUTS:
        if w_in in children and w_out in children and hasattr(module, act):
            W_enc, b_enc = _in_weight(children[w_in])
            W_dec, b_dec = _out_weight(children[w_out])
            return MlpWeights(W_enc, b_enc, W_dec, b_dec, None, None,
                              activation_name(getattr(module, act)))
    raise ConfigError(f"{name} ({type(module).__name__}, children {', '.join(children)}) is not "
                      f"an MLP saelab can read: expected {', '.join(GATED_LAYOUT)} (gated) or one "
                      f"of {'; '.join(', '.join(t) for t in PLAIN_LAYOUTS)}. Name the MLP module "
                      f"itself, e.g. 'model.layers.3.mlp'")


def _weight_bias(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight as [out, in], bias) of an nn.Linear or of GPT-2's Conv1D ([in, out] weight)."""
    weight = layer.weight.detach()
    if type(layer).__name__ == "Conv1D":
        weight = weight.t()
    bias = getattr(layer, "bias", None)
    return weight, None if bias is None else bias.detach()


def _in_weight(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """An input projection: weight [n, d_in] and bias [n] (zeros when it has none)."""
    weight, bias = _weight_bias(layer)
    return weight, torch.zeros_like(weight[:, 0]) if bias is None else bias


def _out_weight(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """An output projection as atoms: its columns as rows [n, d_out], bias [d_out]."""
    weight, bias = _weight_bias(layer)
    return weight.t(), torch.zeros_like(weight[:, 0]) if bias is None else bias


def activation_name(act_fn: Callable[[Tensor], Tensor]) -> str:
    """The name (a key of ACTIVATIONS) of the function `act_fn` computes, found by evaluating it
    on a grid: the first exact match, else the closest within 1e-5; a ConfigError otherwise."""
    probe = torch.linspace(-8, 8, 2001)
    params = list(act_fn.parameters()) if isinstance(act_fn, nn.Module) else []
    if params:
        probe = probe.to(params[0].device)
    with torch.no_grad():
        seen = act_fn(probe)
        errors = {name: (f(probe) - seen).abs().max().item() for name, f in ACTIVATIONS.items()}
    best = min(errors, key=errors.get)
    if errors[best] > 1e-5:
        raise ConfigError(f"the MLP's activation {act_fn!r} is none of {', '.join(ACTIVATIONS)} "
                          f"(closest: {best}, max difference {errors[best]:.2g})")
    return best
