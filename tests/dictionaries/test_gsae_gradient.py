"""g-SAE (`gsae_gradient`): the loss gradient changes which latents TopK keeps, the gradient capture
is d(next-token loss)/d(activation), and training reads gradients from tensors or a store."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import saelab
from saelab.capture import capture
from saelab.capture.gradients import GradientCapture, activation_gradients, gradient_key
from saelab.dictionaries import StepState
from saelab.errors import ConfigError, DataError
from saelab.store import capture_to_store
from saelab.train import WithGradients
from tests.conftest import tiny_llama

HP = "model.layers.1"


def identity_gsae(beta: float = 1.0, k: int = 1):
    """A 4-latent g-SAE whose atoms are the standard basis: codes are the input's coordinates."""
    sae = saelab.create("gsae_gradient", d_in=4, n_latents=4, k=k, beta=beta)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    return sae


def topk_twin(sae):
    """A TopK SAE with the same weights and k."""
    twin = saelab.create("topk", d_in=sae.d_in, n_latents=sae.n_latents, k=sae.cfg.k)
    twin.load_state_dict(sae.state_dict())
    return twin


def test_gradient_moves_the_selection_to_a_smaller_but_loss_relevant_latent():
    sae = identity_gsae()
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    grad = torch.tensor([[0.0, 3.0, 0.0, 0.0]])  # only atom 1 changes the loss
    # TopK keeps the largest code; the score 1 + 1 * 1 * 3 = 4 beats 2 + 2 * 0 = 2
    assert torch.equal(sae.encode(x), torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(sae.encode(x, grad), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_selection_score_is_the_papers_formula():
    # Olmo et al. 2024: TopK over z + beta * z o |W_dec^T grad| (no normalisation of the term)
    torch.manual_seed(0)
    sae = saelab.create("gsae_gradient", d_in=16, n_latents=64, k=4, beta=0.7)
    x, grad = torch.randn(32, 16), 5 * torch.randn(32, 16)
    z = sae.pre_activations(x).detach()
    expected = z + 0.7 * z * (grad @ sae.W_dec.detach().T).abs()
    torch.testing.assert_close(sae.selection_scores(z, grad), expected)
    top = expected.topk(4, dim=-1).indices
    assert torch.equal((sae.encode(x, grad) != 0), torch.zeros(32, 64).scatter(1, top, 1) > 0)


def test_row_mean_option_divides_the_gradient_term_by_its_mean_over_latents():
    torch.manual_seed(0)
    sae = saelab.create("gsae_gradient", d_in=16, n_latents=64, k=4, beta=0.7,
                        gradient_scale="row_mean")
    z, grad = torch.randn(32, 64), torch.randn(32, 16)
    a = (grad @ sae.W_dec.detach().T).abs()
    torch.testing.assert_close(sae.selection_scores(z, grad),
                               z * (1 + 0.7 * a / a.mean(-1, keepdim=True)))
    # so it does not depend on the gradient's scale, where the paper's score does
    torch.testing.assert_close(sae.selection_scores(z, 10 * grad), sae.selection_scores(z, grad))


def test_selection_differs_from_topk_on_random_rows_with_random_gradients():
    torch.manual_seed(0)
    sae = saelab.create("gsae_gradient", d_in=16, n_latents=64, k=4, beta=2.0)
    x, grad = torch.randn(256, 16), torch.randn(256, 16)
    g_codes, t_codes = sae.encode(x, grad), topk_twin(sae).encode(x)
    differs = ((g_codes > 0) != (t_codes > 0)).any(1).float().mean()
    assert differs > 0.5
    kept = g_codes > 0  # the kept codes are the ordinary ReLU'd pre-activations
    assert torch.allclose(g_codes[kept], sae.pre_activations(x).detach()[kept])


def test_zero_or_uniform_gradient_or_beta_zero_selects_exactly_like_topk():
    torch.manual_seed(0)
    sae = saelab.create("gsae_gradient", d_in=16, n_latents=64, k=4)
    with torch.no_grad():  # every atom has the same |first coordinate|: a uniform gradient term
        sae.W_dec[:, 0] = 0.5 * torch.sign(torch.randn(64))
    x = torch.randn(128, 16)
    expected = topk_twin(sae).encode(x)
    uniform = torch.zeros(128, 16)
    uniform[:, 0] = torch.rand(128) + 0.1
    assert torch.equal(sae.encode(x, torch.zeros(128, 16)), expected)
    assert torch.equal(sae.encode(x, uniform), expected)
    assert torch.equal(sae.encode(x), expected)
    sae.cfg.beta = 0.0
    assert torch.equal(sae.encode(x, torch.randn(128, 16)), expected)


def test_loss_selects_with_the_gradients_of_the_step_state():
    sae = identity_gsae()
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    grad = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    with_grad = sae.loss(x, StepState(extra={"grads": grad}))
    without = sae.loss(x, StepState())
    assert with_grad.active.tolist() == [False, True, False, False]
    assert without.active.tolist() == [True, False, False, False]
    assert with_grad.terms["mse"].item() == pytest.approx(4.0)  # atom 0's 2 is left out
    with_grad.total.backward()
    assert sae.W_enc.grad[[0, 2, 3]].abs().sum() == 0  # only the kept latent's row learns


def test_gradient_of_the_wrong_shape_is_a_data_error():
    sae = identity_gsae()
    with pytest.raises(DataError, match="d_in=4"):
        sae.encode(torch.randn(3, 4), torch.randn(3, 5))


@pytest.mark.parametrize("beta", [-0.5, float("inf"), True, "1"])
def test_bad_beta_is_refused_naming_the_field(beta):
    with pytest.raises(ConfigError, match="beta"):
        saelab.create("gsae_gradient", d_in=4, n_latents=8, k=2, beta=beta)


def test_transcoder_shape_is_refused_naming_d_out():
    with pytest.raises(ConfigError, match="d_out"):
        saelab.create("gsae_gradient", d_in=4, n_latents=8, k=2, d_out=6)


def test_fit_on_plain_activations_says_how_to_provide_gradients():
    sae = saelab.create("gsae_gradient", d_in=16, n_latents=32, k=4)
    with pytest.raises(ConfigError, match=r"WithGradients\(x, grads\).*beta=0"):
        saelab.fit(sae, torch.randn(256, 16), saelab.TrainConfig(steps=2, batch_size=64,
                                                                 progress=False))
    plain = saelab.create("gsae_gradient", d_in=16, n_latents=32, k=4, beta=0.0)
    saelab.fit(plain, torch.randn(256, 16), saelab.TrainConfig(steps=2, batch_size=64,
                                                               progress=False))


def test_gradients_of_the_wrong_shape_are_refused_by_fit():
    sae = saelab.create("gsae_gradient", d_in=16, n_latents=32, k=4)
    with pytest.raises(DataError, match="grads have shape"):
        saelab.fit(sae, WithGradients(torch.randn(256, 16), torch.randn(255, 16)),
                   saelab.TrainConfig(steps=2, batch_size=64, progress=False))


def test_training_on_rows_with_gradients_learns_the_planted_data(planted):
    x = planted.x[:512]
    grads = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    sae = saelab.create("gsae_gradient", d_in=x.shape[1], n_latents=128, k=3)
    before = saelab.evaluate(sae, x)["reconstruction"]["fvu"]
    saelab.fit(sae, WithGradients(x, grads), saelab.TrainConfig(
        steps=300, batch_size=128, lr=4e-3, warmup_steps=10, progress=False))
    after = saelab.evaluate(sae, x)["reconstruction"]["fvu"]
    assert after < 0.5 * before and after < 0.5


@pytest.fixture(scope="module")
def lm64():
    model = tiny_llama(layers=3, seed=1).double()
    tokens = torch.randint(2, 64, (6, 12), generator=torch.Generator().manual_seed(3))
    return model, tokens


def by_hand(model, tokens, module_name: str):
    """d(summed next-token CE)/d(output of a module), through a zero perturbation added by a
    forward hook (a second, independent route through torch.autograd)."""
    module = dict(model.named_modules())[module_name]
    delta = torch.zeros(*tokens.shape, model.config.hidden_size, dtype=torch.float64,
                        requires_grad=True)
    handle = module.register_forward_hook(lambda m, a, out: out + delta if torch.is_tensor(out)
                                          else (out[0] + delta, *out[1:]))
    try:
        with torch.enable_grad():
            logits = model(input_ids=tokens).logits[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   tokens[:, 1:].reshape(-1), reduction="sum")
            loss.backward()
    finally:
        handle.remove()
    return delta.grad, loss.item()


def test_captured_gradient_matches_autograd_by_hand_and_finite_differences(lm64):
    model, tokens = lm64
    got = activation_gradients(model, tokens, HP, batch_contexts=4)
    expected, loss = by_hand(model, tokens, HP)
    assert torch.allclose(got.grads, expected.float(), atol=1e-6, rtol=1e-4)
    assert got.loss.sum().item() == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(got.acts, capture(model, [HP], tokens)[HP].float())
    assert got.grads[:, -1].abs().max() == 0  # the last position predicts nothing
    assert got.grads[:, :-1].abs().amin(-1).max() > 0
    # one coordinate by a central difference of the loss (a coarse check: the model's RMSNorm
    # computes in float32 even in a float64 model, so eps cannot be tiny)
    (b, t, j), eps = (2, 5, 7), 1e-3
    module = dict(model.named_modules())[HP]
    losses = []
    for sign in (1, -1):
        def bump(m, a, out, s=sign):
            h = (out if torch.is_tensor(out) else out[0]).clone()
            h[b, t, j] += s * eps
            return h if torch.is_tensor(out) else (h, *out[1:])
        handle = module.register_forward_hook(bump)
        logits = model(input_ids=tokens).logits[:, :-1]
        handle.remove()
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      tokens[:, 1:].reshape(-1), reduction="sum").item())
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(got.grads[b, t, j].item(),
                                                                rel=1e-3)


def test_input_site_gradient_is_the_previous_blocks_output_gradient(lm64):
    model, tokens = lm64
    inp = activation_gradients(model, tokens, "model.layers.1:input")
    prev = activation_gradients(model, tokens, "model.layers.0")
    assert torch.allclose(inp.acts, prev.acts) and torch.allclose(inp.grads, prev.grads)


def test_capture_leaves_the_weights_without_gradients(lm64):
    model, tokens = lm64
    GradientCapture(model, HP).run(input_ids=tokens[:2])
    assert all(p.grad is None for p in model.parameters())


def test_store_with_gradients_trains_gsae_end_to_end(lm64, tmp_path):
    model, tokens = lm64
    model = model.float()
    try:
        store = capture_to_store(model, tokens, [HP], tmp_path / "s", model_name="tiny",
                                 norm_factor=None, progress=False, gradients=True)
        assert store.hookpoints == [HP, gradient_key(HP)]
        ref = activation_gradients(model, tokens, HP)
        rows = next(store.iter_rows(gradient_key(HP), batch_size=10_000))[0]
        assert torch.allclose(rows, ref.grads.reshape(-1, ref.grads.shape[-1]), atol=1e-6)
        sae = saelab.create("gsae_gradient", d_in=store.d(HP), n_latents=64, k=4)
        cfg = saelab.TrainConfig(steps=20, batch_size=24, progress=False)
        saelab.fit(sae, tmp_path / "s", cfg)
        assert sae.provenance["data_gradient_hookpoint"] == gradient_key(HP)
        assert sae.provenance["hookpoint"] == HP
        topk = saelab.fit(saelab.create("topk", d_in=store.d(HP), n_latents=64, k=4),
                          tmp_path / "s", cfg)  # a dictionary without gradients reads none
        assert "data_gradient_hookpoint" not in topk.provenance
    finally:
        model.double()


def test_store_without_gradients_says_how_to_capture_them(lm64, tmp_path):
    model, tokens = lm64
    model = model.float()
    try:
        capture_to_store(model, tokens, [HP], tmp_path / "s", model_name="tiny",
                         norm_factor=None, progress=False)
    finally:
        model.double()
    sae = saelab.create("gsae_gradient", d_in=32, n_latents=64, k=4)
    with pytest.raises(ConfigError, match=r"no gradient hookpoint.*gradients=True"):
        saelab.fit(sae, tmp_path / "s", saelab.TrainConfig(steps=2, batch_size=24,
                                                           progress=False))
