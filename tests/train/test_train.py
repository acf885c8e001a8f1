"""The training loop: recovery of a planted dictionary, exact resume, checkpoints, errors."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import saelab
from tests.steps import killed_at
from saelab.errors import ConfigError, DataError, OutputExistsError
from saelab.train.optim import lr_factor
from tests.conftest import planted_data


def cfg(**kw):
    base = dict(steps=40, batch_size=256, progress=False)
    return saelab.TrainConfig(**{**base, **kw})


def test_topk_recovers_a_planted_dictionary():
    data = planted_data(n=30_000, d=32, n_atoms=64, active=3, seed=1, noise=0.01, offset=2.0)
    sae = saelab.create("topk", d_in=32, n_latents=128, k=3)
    sae = saelab.fit(sae, data.x, cfg(steps=800, batch_size=512, lr=4e-3))
    cos = (data.atoms @ (sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)).T).max(1).values
    assert (cos > 0.9).float().mean() >= 0.9
    out = sae(data.x[:4000])
    fvu = (out.x_hat - data.x[:4000]).pow(2).sum() / (data.x[:4000] - data.x[:4000].mean(0)
                                                      ).pow(2).sum()
    assert fvu < 0.1


def test_returned_dictionary_works_in_raw_units(planted):
    x = planted.x * 50 + 3  # far from unit norm: the scale must be folded back
    sae = saelab.fit(saelab.create("topk", d_in=32, n_latents=128, k=3), x,
                     cfg(steps=300, batch_size=512))
    out = sae(x[:2000])
    fvu = (out.x_hat - x[:2000]).pow(2).sum() / (x[:2000] - x[:2000].mean(0)).pow(2).sum()
    assert fvu < 0.5
    assert sae.provenance["input_scale"] == pytest.approx(
        1 / x[: 1 << 16].pow(2).sum(-1).mean().sqrt().item(), rel=1e-4)


def test_resumed_run_ends_with_the_same_weights(planted, tmp_path):
    full = saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), planted.x,
                      cfg(steps=30, out=str(tmp_path / "a"), checkpoint_every=10))

    with killed_at(17), pytest.raises(KeyboardInterrupt):
        saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), planted.x,
                   cfg(steps=30, out=str(tmp_path / "b"), checkpoint_every=10))
    info = json.loads((tmp_path / "b" / "checkpoint" / "train_state.json").read_text())
    assert info["step"] == 10
    resumed = saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), planted.x,
                         cfg(steps=30, out=str(tmp_path / "b"), checkpoint_every=10))
    for (n, t1), t2 in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(t1, t2), n
    steps = [json.loads(ln)["step"] for ln in
             (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


def test_run_folder_holds_metrics_checkpoint_and_final_dictionary(planted, tmp_path):
    saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), planted.x,
               cfg(steps=50, out=str(tmp_path), log_every=10))
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40, 50]
    assert {"fvu", "l0", "dead_fraction", "lr", "mse"} <= set(lines[0])
    loaded = saelab.load(tmp_path / "sae")
    assert loaded.provenance["steps"] == 50


def test_a_different_run_in_the_same_folder_is_refused(planted, tmp_path):
    saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), planted.x,
               cfg(steps=5, out=str(tmp_path)))
    before = (tmp_path / "sae" / "weights.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=4), planted.x,
                   cfg(steps=5, out=str(tmp_path)))
    assert (tmp_path / "sae" / "weights.safetensors").read_bytes() == before
    saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=4), planted.x,
               cfg(steps=5, out=str(tmp_path), overwrite=True))
    assert saelab.load(tmp_path / "sae").cfg.k == 4


def test_nan_activations_are_reported_with_the_step():
    batches = [torch.randn(64, 8) for _ in range(5)]
    batches[3][7, 2] = float("nan")
    with pytest.raises(DataError, match="step 3"):
        saelab.fit(saelab.create("topk", d_in=8, n_latents=16, k=2), batches,
                   cfg(steps=5, batch_size=64))


def test_nan_in_a_tensor_is_refused_before_training():
    x = torch.randn(1000, 8)
    x[10, 0] = float("inf")
    with pytest.raises(DataError, match="row 10"):
        saelab.fit(saelab.create("topk", d_in=8, n_latents=16, k=2), x, cfg())


def test_wrong_width_is_a_clear_error():
    with pytest.raises(DataError, match="d_in=8"):
        saelab.fit(saelab.create("topk", d_in=8, n_latents=16, k=2), torch.randn(1000, 9), cfg())


def test_iterable_without_length_needs_steps():
    gen = (torch.randn(32, 8) for _ in range(10))
    with pytest.raises(ConfigError, match="steps"):
        saelab.fit(saelab.create("topk", d_in=8, n_latents=16, k=2), gen,
                   saelab.TrainConfig(batch_size=32, progress=False))


def test_dead_latents_are_counted_in_the_metrics(planted, tmp_path):
    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=32, n_latents=128, k=2)
    with torch.no_grad():  # half of the latents can never fire
        sae.b_enc[64:] = -100.0
    saelab.fit(sae, planted.x, cfg(steps=30, batch_size=256, dead_after_tokens=2048,
                                   out=str(tmp_path), log_every=5))
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["dead_fraction"] < 0.5  # not yet past the dead window
    assert rows[-1]["dead_fraction"] == pytest.approx(0.5, abs=0.05)


def test_default_dead_window_is_a_quarter_of_a_short_run(planted, tmp_path):
    from saelab.train.run import default_dead_window

    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=32, n_latents=128, k=2)
    with torch.no_grad():  # half of the latents can never fire
        sae.b_enc[64:] = -100.0
    # 40 steps x 256 = 10,240 vectors: dead after 2,560 (10 steps), not after the 2M cap
    saelab.fit(sae, planted.x, cfg(out=str(tmp_path), log_every=1))
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    dead = {r["step"]: r["dead_fraction"] for r in rows}
    assert max(v for s, v in dead.items() if s < 9) < 0.5
    assert dead[max(dead)] == pytest.approx(0.5, abs=0.05)
    assert default_dead_window(10**9) == 2_000_000


def test_auxk_trains_dead_latents_to_reconstruct_the_residual(planted):
    from saelab.dictionaries import StepState
    from saelab.train.optim import make_optimizer
    from saelab.train.step import train_step

    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=32, n_latents=128, k=2, auxk_coeff=1.0)
    x = planted.x[:2048] / planted.x[:2048].pow(2).sum(-1).mean().sqrt()
    sae.init_from_data(x)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[64:] = True
    opt = make_optimizer(sae.parameters(), 3e-3)
    state = StepState(step=10, total_steps=20, dead_mask=dead)
    first = sae.loss(x, state).terms["auxk"].item()
    for _ in range(60):
        train_step(sae, opt, x, state)
    assert sae.loss(x, state).terms["auxk"].item() < 0.8 * first


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_grad_clip_bounds_the_global_gradient_norm(planted, clip):
    from saelab.dictionaries import StepState
    from saelab.train.optim import make_optimizer
    from saelab.train.step import train_step

    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=32, n_latents=128, k=2)
    x = planted.x[:512]
    sae.init_from_data(x)
    train_step(sae, make_optimizer(sae.parameters(), 1e-3), x, StepState(step=0, total_steps=1),
               grad_clip=clip)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in sae.parameters()]))
    if clip:  # the gradients Adam saw are the clipped ones (left in .grad by the step)
        assert norm <= clip * (1 + 1e-4)
    else:
        assert norm > 1e-2  # unclipped, the same step's gradient is far larger


def test_grad_clip_must_not_be_negative():
    with pytest.raises(ConfigError, match="grad_clip"):
        saelab.TrainConfig(grad_clip=-1.0)


def test_learning_rate_warms_up_and_decays():
    assert lr_factor(0, 100, 10, 0.8) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, 0.8) == 1.0
    assert lr_factor(90, 100, 10, 0.8) == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, 0.8) == pytest.approx(0.05)


def test_store_of_another_width_is_refused(tiny_lm, tokens, tmp_path):
    from saelab.store import capture_to_store

    store = capture_to_store(tiny_lm, tokens, ["model.layers.1"], tmp_path / "s",
                             model_name="tiny", progress=False)
    with pytest.raises(DataError, match="d_in=16"):
        saelab.fit(saelab.create("topk", d_in=16, n_latents=32, k=2), store.path, cfg())


def test_nan_in_a_store_names_the_step_and_hookpoint(tiny_lm, tokens, tmp_path):
    from safetensors.torch import load_file, save_file

    from saelab.store import capture_to_store

    store = capture_to_store(tiny_lm, tokens, ["model.layers.1"], tmp_path / "s",
                             model_name="tiny", progress=False)
    shard = store.path / store.manifest["shards"][0]["file"]
    tensors = load_file(str(shard))
    tensors["acts/model.layers.1"][:] = float("nan")  # every row: any batch hits it
    save_file(tensors, str(shard))
    manifest = json.loads((store.path / "manifest.json").read_text())  # as if captured so
    manifest["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"step 0.*model\.layers\.1"):
        saelab.fit(saelab.create("topk", d_in=32, n_latents=32, k=2), store.path,
                   cfg(batch_size=64))


def test_a_value_too_large_for_float32_squares_is_refused_naming_its_row(planted):
    x = planted.x[:2048].clone()
    x[300, 4] = 1e20  # finite, but its square overflows: the input scale would be 0
    with pytest.raises(DataError, match=r"row \d+ of the first batch of data holds a value of "
                                        r"1e\+20"):
        saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), x,
                   cfg(steps=5, batch_size=2048))
