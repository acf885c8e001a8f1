"""supervised (saelab.dictionaries.supervised) and the IOI task (saelab.data.ioi): on planted data
whose rows are exact sums of attribute vectors the dictionary recovers them (means and least
squares), infers the values without labels, and editing an attribute by its atoms, by exchanging
latents, or by F1-guided exchange reaches the counterfactual row; F1 and the logit-difference share
are what they say; labels that do not fit are refused; IOI prompts are balanced and their
counterfactuals change one attribute; on SmolLM2-135M the task is solved and the three figures
come out as the paper's comparison expects."""

from __future__ import annotations

import itertools

import pytest
import torch

import saelab
from saelab import models
from saelab.data import ioi
from saelab.dictionaries import Rows
from saelab.dictionaries.supervised import (attribute_f1, edit_accuracy, edit_by_exchange,
                                            edit_by_f1, edit_supervised, indicator_labels,
                                            interpretability, logit_diff_recovered)
from saelab.errors import ConfigError, DataError

D = 32
SIZES = (5, 4, 2)


def planted(repeats: int = 10, seed: int = 0):
    """(x [N, D], values [N, 3], vectors per attribute [n_a, D], offset [D]): every combination
    of values `repeats` times (a fully crossed design, so conditional means are exact), each row
    the offset plus the vectors of its values."""
    g = torch.Generator().manual_seed(seed)
    vectors = [3 * torch.randn(n, D, generator=g) for n in SIZES]
    offset = torch.randn(D, generator=g)
    values = torch.tensor(list(itertools.product(*(range(n) for n in SIZES))) * repeats)
    values = values[torch.randperm(len(values), generator=g)]
    x = offset + sum(v[values[:, a]] for a, v in enumerate(vectors))
    return x, values, vectors, offset


def fitted(x, values, method="mean", n_latents=None):
    sup = saelab.create("supervised", d_in=D, n_latents=n_latents or sum(SIZES),
                        values=list(SIZES), method=method)
    return saelab.fit(sup, saelab.train.Labelled(x, indicator_labels(values, SIZES)),
                      saelab.TrainConfig(steps=1, batch_size=len(x), progress=False))


@pytest.mark.parametrize("method", ["mean", "least_squares"])
def test_recovers_planted_attribute_vectors_centred_and_reconstructs_exactly(method):
    x, values, vectors, offset = planted()
    sup = fitted(x, values, method)
    for a, v in enumerate(vectors):
        atoms = sup.W_dec[sup.latent(a, torch.arange(SIZES[a]))].detach()
        torch.testing.assert_close(atoms, v - v.mean(0), rtol=0, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(sup.decode(sup.encode_labels(values)), x, rtol=0, atol=1e-4)


def test_streamed_integer_labels_fit_the_same_atoms_as_one_batch():
    x, values, _, _ = planted()
    whole = fitted(x, values)
    streamed = saelab.create("supervised", d_in=D, n_latents=16)  # layout inferred, 5 spare
    streamed.fit(Rows(xb, None, vb) for xb, vb in zip(x.split(64), values.split(64)))
    assert streamed.sizes == SIZES
    torch.testing.assert_close(streamed.W_dec[:11], whole.W_dec, rtol=0, atol=1e-4)
    assert torch.equal(streamed.W_dec[11:], torch.zeros(5, D))
    assert streamed.attribute_of.tolist() == [0] * 5 + [1] * 4 + [2] * 2 + [-1] * 5
    assert streamed.value_of[:11].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1]


def test_encode_infers_the_planted_values_without_labels():
    x, values, _, _ = planted()
    sup = fitted(x, values)
    with torch.no_grad():
        assert torch.equal(sup.encode(x), sup.encode_labels(values))
        assert (sup.encode(x).sum(1) == 3).all()  # one latent per attribute


def test_save_load_keeps_the_layout(tmp_path):
    x, values, _, _ = planted(repeats=2)
    sup = fitted(x, values, n_latents=20)
    sup.save(tmp_path / "sup")
    back = saelab.load(tmp_path / "sup")
    assert back.sizes == SIZES and torch.equal(back.attribute_of, sup.attribute_of)
    with torch.no_grad():
        assert torch.equal(back.encode(x), sup.encode(x))


def counterfactual_rows(x, values, vectors, attribute, seed=1):
    """(new values [N], x with `attribute` changed to them): every row gets another value."""
    g = torch.Generator().manual_seed(seed)
    n = SIZES[attribute]
    new = (values[:, attribute] + torch.randint(1, n, (len(x),), generator=g)) % n
    v = vectors[attribute]
    return new, x - v[values[:, attribute]] + v[new]


@pytest.mark.parametrize("attribute", [0, 2])
def test_editing_by_atoms_reaches_the_counterfactual_row(attribute):
    x, values, vectors, _ = planted()
    sup = fitted(x, values)
    new, x_cf = counterfactual_rows(x, values, vectors, attribute)
    edited = edit_supervised(sup, x, attribute, values[:, attribute], new)
    torch.testing.assert_close(edited, x_cf, rtol=0, atol=1e-4)


def test_exchange_edit_swaps_the_two_latents_that_differ():
    """With the supervised dictionary as the one edited, the counterfactual differs from the row
    in two latents (old value off, new value on): exchanging those two reaches it exactly, and
    the greedy choice finds them."""
    x, values, vectors, _ = planted()
    sup = fitted(x, values)
    new, x_cf = counterfactual_rows(x, values, vectors, 0)
    edit = edit_by_exchange(sup, x, x_cf, n_exchange=2)
    torch.testing.assert_close(edit.x, x_cf, rtol=0, atol=1e-4)
    expected = torch.stack([sup.latent(0, values[:, 0]), sup.latent(0, new)], 1)
    assert torch.equal(edit.latents.sort(1).values, expected.sort(1).values)
    one = edit_by_exchange(sup, x, x_cf, n_exchange=1)  # half the way: worse than both
    assert (one.x - x_cf).norm() > (edit.x - x_cf).norm() + 1


def test_f1_guided_edit_removes_the_old_values_latent_and_adds_the_new():
    x, values, vectors, _ = planted()
    sup = fitted(x, values)
    new, x_cf = counterfactual_rows(x, values, vectors, 1)
    with torch.no_grad():
        f1 = attribute_f1(sup.encode(x), values[:, 1], SIZES[1])
    edit = edit_by_f1(sup, x, x_cf, f1, values[:, 1], new, n_exchange=1)
    torch.testing.assert_close(edit.x, x_cf, rtol=0, atol=1e-4)
    assert torch.equal(edit.latents[:, 0], sup.latent(1, values[:, 1]))
    assert torch.equal(edit.latents[:, 1], sup.latent(1, new))


def test_f1_of_a_hand_made_case():
    codes = torch.tensor([[1.0, 0], [1, 0], [0, 2], [1, 2]])  # latent 0 fires on rows 0, 1, 3
    values = torch.tensor([0, 0, 1, 1])
    f1 = attribute_f1(codes, values, 2)
    # latent 0 / value 0: precision 2/3, recall 1 -> 0.8; latent 1 / value 1: precision 1, recall 1
    torch.testing.assert_close(f1, torch.tensor([[0.8, 0.4], [0.0, 1.0]]))
    result = interpretability(codes, values, 2)
    assert result.best_latent.tolist() == [0, 1] and result.mean_best_f1 == pytest.approx(0.9)


def test_supervised_latents_detect_their_values_perfectly_and_random_codes_do_not():
    x, values, _, _ = planted()
    sup = fitted(x, values)
    with torch.no_grad():
        codes = sup.encode(x)
    for a, n in enumerate(SIZES):
        result = interpretability(codes, values[:, a], n)
        assert torch.equal(result.best_f1, torch.ones(n))
        assert torch.equal(result.best_latent, sup.latent(a, torch.arange(n)))
    noise = (torch.rand(len(x), 64, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    assert interpretability(noise, values[:, 0], SIZES[0]).mean_best_f1 < 0.5


def test_logit_diff_recovered_and_edit_accuracy_are_the_shares_they_say():
    clean, ablated = torch.tensor([4.0, 6.0]), torch.tensor([1.0, 1.0])
    assert logit_diff_recovered(clean, torch.tensor([3.0, 4.0]), ablated) == pytest.approx(0.625)
    assert logit_diff_recovered(clean, clean, ablated) == 1
    with pytest.raises(DataError, match="nothing to recover"):
        logit_diff_recovered(clean, clean, clean)
    assert edit_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 0.5


def test_labels_that_do_not_fit_are_refused_with_the_reason():
    x, values, _, _ = planted(repeats=1)
    sup = saelab.create("supervised", d_in=D, n_latents=11, values=list(SIZES))
    with pytest.raises(DataError, match="5 columns.*3 columns of values or 11 indicator"):
        sup.fit([Rows(x, None, torch.zeros(len(x), 5))])
    two_ones = indicator_labels(values, SIZES)
    two_ones[0, 1] = 1
    with pytest.raises(DataError, match="attribute 0 .*exactly one 1 per row"):
        sup.fit([Rows(x, None, two_ones)])
    too_big = values.clone()
    too_big[0, 2] = 2
    with pytest.raises(DataError, match="attribute 2 has a value 2"):
        sup.fit([Rows(x, None, too_big)])
    with pytest.raises(DataError, match="need 11 latents.*n_latents=8"):
        saelab.create("supervised", d_in=D, n_latents=8).fit([Rows(x, None, values)])
    with pytest.raises(DataError, match="attribute labels"):
        sup.fit([Rows(x)])
    with pytest.raises(ConfigError, match="values"):
        saelab.create("supervised", d_in=D, n_latents=8, values=[5, 4, 2])
    with pytest.raises(ConfigError, match="values"):
        saelab.create("supervised", d_in=D, n_latents=8, values=[1, 2])


# --- the IOI task -----------------------------------------------------------------------------
NAMES = ("Mary", "John", "Tom", "Anna", "Paul", "Kate")


def test_ioi_prompts_are_balanced_and_say_what_their_attributes_say():
    prompts = ioi.make_prompts(NAMES, 200, seed=0, pool=range(4))
    assert int(prompts.io_pos.sum()) == 100  # exactly half BAB
    assert (prompts.io != prompts.s).all() and prompts.io.max() < 4 and prompts.s.max() < 4
    for i in range(20):
        text, io, s = prompts.text(i), NAMES[int(prompts.io[i])], NAMES[int(prompts.s[i])]
        first = text.index(f" {io} ") if f" {io} " in text else text.index(f"{io} ")
        assert text.count(s) == 2 and text.count(io) == 1
        assert (first < text.index(s)) == (int(prompts.io_pos[i]) == 0)
    assert prompts.attributes().shape == (200, 3) and prompts.value_counts() == (6, 6, 2)


def test_ioi_counterfactuals_change_one_attribute():
    prompts = ioi.make_prompts(NAMES, 100, seed=0, pool=range(3))
    new_io = ioi.counterfactual(prompts, "io", pool=range(3, 6), seed=1)
    assert torch.equal(new_io.s, prompts.s) and torch.equal(new_io.io_pos, prompts.io_pos)
    assert (new_io.io >= 3).all()
    flipped = ioi.counterfactual(prompts, "io_pos")
    assert torch.equal(flipped.io, prompts.io) and torch.equal(flipped.io_pos, 1 - prompts.io_pos)
    with pytest.raises(DataError, match="even"):
        ioi.make_prompts(NAMES, 7)
    with pytest.raises(DataError, match="unknown IOI attribute"):
        ioi.counterfactual(prompts, "template")


# --- SmolLM2-135M -----------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_solves_ioi_and_the_supervised_dictionary_approximates_and_controls_it():
    """Layer 23's final position carries the IO name (the counterfactual patch moves the answer
    there: bench/supervised_ioi.py). The supervised reconstruction keeps most of the logit
    difference, and swapping the IO atom makes the model name the new IO."""
    lm = models.load("smollm2-135m")
    names = ioi.single_token_names(lm.tokenizer)
    assert len(names) >= 100
    half = len(names) // 2
    train = ioi.make_prompts(names, 256, seed=0)
    held = ioi.make_prompts(names, 48, seed=1, pool=range(half))
    hp = "model.layers.23"
    clean = ioi.run(lm, held, hp)
    assert ioi.accuracy(clean, held) > 0.9

    x_train = ioi.final_activations(lm, train, [hp])[hp]
    sizes = train.value_counts()
    sup = saelab.create("supervised", d_in=lm.d_model, n_latents=sum(sizes), values=list(sizes))
    sup.fit([Rows(x_train, None, train.attributes())])
    ld = clean.logit_diff(held)
    ablated = ioi.run(lm, held, hp, replace=x_train.mean(0).expand(len(held), -1))
    with torch.no_grad():
        x_sup = sup.decode(sup.encode_labels(held.attributes()))
    spliced = ioi.run(lm, held, hp, replace=x_sup)
    assert logit_diff_recovered(ld, spliced.logit_diff(held), ablated.logit_diff(held)) > 0.6

    cf = ioi.counterfactual(held, "io", pool=range(half, len(names)), seed=1)
    edited = ioi.run(lm, held, hp, replace=edit_supervised(sup, clean.activation, 0, held.io,
                                                           cf.io))
    rows = torch.arange(len(held))
    new = edited.name_logits[rows, cf.io]
    moved = (new > edited.name_logits[rows, held.io]) & (new > edited.name_logits[rows, held.s])
    assert moved.float().mean() > 0.7
