"""mlp_neurons: an MLP read from a model's weights is that MLP, exactly (decode(encode(x)) is the
module's output for its input), for SmolLM2's gated MLP and a plain GPT-2 MLP; it survives
save/load and refuses what it cannot read."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab import models
from saelab.dictionaries import get
from saelab.dictionaries.mlp_neurons import ACTIVATIONS, activation_name
from saelab.errors import ConfigError

MlpNeurons = get("mlp_neurons")


def mlp_input_and_output(model: torch.nn.Module, module_name: str, tokens: torch.Tensor):
    """The input and output [N, d] of module `module_name` in a forward of `model` on tokens."""
    module = dict(model.named_modules())[module_name]
    seen = {}
    handle = module.register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        handle.remove()
    return seen["x"].flatten(0, -2), seen["y"].flatten(0, -2)


@pytest.fixture(scope="module")
def smollm2() -> models.LoadedModel:
    return models.load("smollm2-135m")


@pytest.mark.slow
def test_decode_of_encode_is_smollm2s_mlp_output(smollm2, tmp_path):
    tokens = smollm2.tokenizer(["The cat sat on the mat because it was warm.",
                                "Paris is the capital of France, and Rome of Italy."],
                               return_tensors="pt", padding=True)["input_ids"]
    x, y = mlp_input_and_output(smollm2.model, "model.layers.3.mlp", tokens)
    neurons = MlpNeurons.from_model(smollm2, "model.layers.3.mlp")
    assert (neurons.cfg.gated, neurons.cfg.activation) == (True, "silu")
    assert (neurons.d_in, neurons.n_latents, neurons.d_out) == (576, 1536, 576)
    with torch.no_grad():
        torch.testing.assert_close(neurons.decode(neurons.encode(x)), y, rtol=1e-5, atol=1e-5)
    assert neurons.provenance["hookpoint"] == "model.layers.3.mlp:input"
    assert neurons.provenance["data_target_hookpoint"] == "model.layers.3.mlp"
    neurons.save(tmp_path / "d")
    back = saelab.load(tmp_path / "d")
    with torch.no_grad():
        assert torch.equal(back.encode(x), neurons.encode(x))


def test_a_plain_gpt2_mlp_is_read_with_its_biases_and_conv1d_weights():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50,
                                       n_positions=32)).eval()
    with torch.no_grad():  # non-zero biases, so that reading them is tested
        for p in model.transformer.h[1].mlp.parameters():
            if p.ndim == 1:
                p.normal_()
    tokens = torch.randint(0, 50, (3, 8))
    x, y = mlp_input_and_output(model, "transformer.h.1.mlp", tokens)
    neurons = MlpNeurons.from_model(model, "transformer.h.1.mlp:input")
    assert (neurons.cfg.gated, neurons.cfg.activation) == (False, "gelu_new")
    assert neurons.n_latents == 4 * 32
    with torch.no_grad():
        torch.testing.assert_close(neurons(x).x_hat, y, rtol=1e-5, atol=1e-5)


def test_the_tiny_llama_mlp_is_reproduced(tiny_lm, tokens):
    x, y = mlp_input_and_output(tiny_lm, "model.layers.2.mlp", tokens)
    neurons = MlpNeurons.from_model(tiny_lm, "model.layers.2.mlp")
    with torch.no_grad():
        torch.testing.assert_close(neurons(x).x_hat, y, rtol=1e-5, atol=1e-5)
        assert torch.equal(neurons.encode(x), tiny_lm.model.layers[2].mlp.act_fn(
            tiny_lm.model.layers[2].mlp.gate_proj(x)) * tiny_lm.model.layers[2].mlp.up_proj(x))


def test_a_module_that_is_not_an_mlp_or_absent_is_refused_naming_it(tiny_lm):
    with pytest.raises(ConfigError, match="self_attn.*not an MLP"):
        MlpNeurons.from_model(tiny_lm, "model.layers.0.self_attn")
    with pytest.raises(ConfigError, match="no module 'model.layers.9.mlp'.*model.layers.0.mlp"):
        MlpNeurons.from_model(tiny_lm, "model.layers.9.mlp")
    with pytest.raises(ConfigError, match="site 'delta'"):
        MlpNeurons.from_model(tiny_lm, "model.layers.0.mlp:delta")


def test_every_named_activation_is_recognised_and_an_unknown_one_refused():
    for name, fn in ACTIVATIONS.items():
        assert activation_name(fn) == name
    with pytest.raises(ConfigError, match="none of"):
        activation_name(torch.tanh)


def test_training_is_refused_with_a_pointer_to_the_model():
    with pytest.raises(ConfigError, match="read from a model's weights"):
        saelab.fit(saelab.create("mlp_neurons", 8, 16), torch.randn(32, 8))
