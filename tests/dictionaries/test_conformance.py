"""Every registered dictionary, checked against the contract (DESIGN.md): shapes, save/load
round trip, training (one gradient step for `trained_by == "gradient"`, its own `fit` for
`trained_by == "fit"`), determinism under a seed, config validation. A throwaway variant fitted
without gradients, registered from a module outside the package, goes through the same checks.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil

import pytest
import torch

import saelab
from saelab import docgen
import saelab.dictionaries as package
from saelab.dictionaries import Dictionary, Output, Rows, StepState, get, names
from saelab.dictionaries._registry import unregister
from saelab.errors import ConfigError
from saelab.train.optim import make_optimizer
from saelab.train.step import train_step

D_IN, N_LATENTS = 16, 64


def make(name: str):
    return saelab.create(name, d_in=D_IN, n_latents=N_LATENTS, seed=0)


def pairs(sae, x):
    """(x, target): target None, or for dictionaries that predict another activation
    ("target" in `needs`, transcoders) a fixed nonlinear map of x of width d_out."""
    if "target" not in sae.needs:
        return x, None
    A = torch.randn(sae.d_in, sae.d_out, generator=torch.Generator().manual_seed(0))
    return x, torch.relu(x) @ A / sae.d_in ** 0.5


def unit_rows_of(planted, n: int) -> torch.Tensor:
    x = planted.x[:n, :D_IN]
    return x / x.pow(2).sum(-1).mean().sqrt()


# --- the checks, shared by the registered variants and the throwaway one ----------------------
def check_shapes(sae) -> None:
    x = torch.randn(7, D_IN, generator=torch.Generator().manual_seed(0))
    codes = sae.encode(x)
    assert codes.shape == (7, N_LATENTS)
    assert sae.decode(codes).shape == (7, sae.d_out)
    out = sae(x)
    assert isinstance(out, tuple) and out._fields[:2] == Output._fields
    # forward may decode sparsely (another summation order than the dense decode)
    torch.testing.assert_close(out.x_hat, sae.decode(codes), rtol=1e-5, atol=1e-6)


def check_round_trip(sae, folder) -> None:
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sae.save(folder)
    back = saelab.load(folder)
    assert type(back) is type(sae) and back.cfg == sae.cfg
    assert list(back.state_dict()) == list(sae.state_dict())
    for (n1, t1), (n2, t2) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sae(x).x_hat, back(x).x_hat)


def reconstruction_error(sae, x, target) -> float:
    with torch.no_grad():
        return (sae(x).x_hat - (x if target is None else target)).pow(2).sum(-1).mean().item()


def check_training_improves_it(sae, x) -> None:
    """One optimiser step lowers the loss (trained by gradient), or fitting lowers the
    reconstruction error (trained by its own `fit`)."""
    x, target = pairs(sae, x)
    if sae.trained_by == "model":  # read from a model's weights: training is refused
        with pytest.raises(ConfigError, match="read from a model"):
            saelab.fit(sae, x)
    elif sae.trained_by == "gradient":
        sae.init_from_data(x if target is None else target)
        state = StepState(step=50, total_steps=100)
        before = sae.loss(x, state, target).total.item()
        train_step(sae, make_optimizer(sae.parameters(), 1e-3), x, state, target)
        assert sae.loss(x, state, target).total.item() < before
    else:
        assert sae.trained_by == "fit", sae.trained_by
        before = reconstruction_error(sae, x, target)
        labels = concept_labels(x) if "labels" in sae.needs else None
        sae.fit(Rows(*r) for r in zip(x.split(128), (None,) * 128 if target is None
                                       else target.split(128),
                                       (None,) * 128 if labels is None else labels.split(128)))
        assert reconstruction_error(sae, x, target) < before


def concept_labels(x):
    """Per-row labels of two concepts for supervised dictionaries: the signs of two inputs."""
    return torch.stack([x[:, 0] > 0, x[:, 1] > 0], 1).long()


def check_deterministic(name: str, planted) -> None:
    if make(name).trained_by == "model":  # nothing trained: creation under a seed decides
        for t1, t2 in zip(make(name).state_dict().values(), make(name).state_dict().values()):
            assert torch.equal(t1, t2)
        return
    x, target = pairs(make(name), planted.x[:2048, :D_IN])
    data = x if target is None else (x, target)  # fit variants read `steps` batches of it
    if "labels" in make(name).needs:
        data = saelab.train.Labelled(data, concept_labels(x))
    if "gradients" in make(name).needs:  # g-SAE: a fixed stand-in loss gradient
        grads = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        data = saelab.train.WithGradients(data, grads)
    cfg = saelab.TrainConfig(steps=5, batch_size=256, seed=3, progress=False)
    a = saelab.fit(make(name), data, cfg)
    b = saelab.fit(make(name), data, cfg)
    for t1, t2 in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(t1, t2)


# --- every registered name --------------------------------------------------------------------
@pytest.fixture(params=names())
def name(request):
    return request.param


def test_every_variant_module_registers_a_name_and_names_lists_exactly_them():
    registered = set()
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        here = {cls.architecture for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, Dictionary) and cls.__module__ == module.__name__
                and cls.architecture in names() and get(cls.architecture) is cls}
        assert here, f"{module.__name__} registers no dictionary"
        registered |= here
    assert set(names()) == registered
    assert all(get(n).architecture == n for n in names())
    assert saelab.architectures() == names()


def test_shapes_of_encode_decode_forward(name):
    check_shapes(make(name))


def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    check_round_trip(make(name), tmp_path / "d")


def test_training_lowers_the_loss_or_the_error(name, planted):
    check_training_improves_it(make(name), unit_rows_of(planted, 512))


def test_training_is_deterministic_under_a_seed(name, planted):
    check_deterministic(name, planted)


def test_unknown_field_is_a_config_error_naming_it(name):
    with pytest.raises(ConfigError, match="no_such_field"):
        saelab.create(name, d_in=D_IN, n_latents=N_LATENTS, no_such_field=1)


def test_non_positive_sizes_are_refused(name):
    with pytest.raises(ConfigError, match="n_latents"):
        saelab.create(name, d_in=D_IN, n_latents=0)


# --- a throwaway variant trained by `fit`, from a module outside the package -------------------
THROWAWAY = '''
"""Principal directions of the data, fitted by SVD: a stand-in for PCA, ITDA, semi-NMF."""

import torch
from torch import nn

from saelab.dictionaries import Dictionary, as_rows, register


@register("throwaway_fit")
class ThrowawayFit(Dictionary):
    """Atoms are the leading right singular vectors of the centred data."""

    trained_by = "fit"
    unit_norm_decoder = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.W_dec = nn.Parameter(0.01 * torch.randn(cfg.n_latents, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))

    def encode(self, x):
        return (x - self.b_dec) @ self.W_dec.t()

    @torch.no_grad()
    def fit(self, batches):
        x = torch.cat([as_rows(b).x for b in batches])
        self.b_dec.copy_(x.mean(0))
        v = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh
        self.W_dec.zero_()
        self.W_dec[: v.shape[0]] = v[: self.n_latents]
'''


@pytest.fixture
def throwaway(tmp_path):
    """The name of a variant registered by importing a module written to tmp_path."""
    file = tmp_path / "throwaway_variant.py"
    file.write_text(THROWAWAY)
    spec = importlib.util.spec_from_file_location("throwaway_variant", file)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    yield "throwaway_fit"
    unregister("throwaway_fit")


def test_a_variant_in_a_new_module_is_registered_and_passes_conformance(throwaway, planted,
                                                                        tmp_path):
    assert throwaway in names() and get(throwaway).trained_by == "fit"
    check_shapes(make(throwaway))
    check_round_trip(make(throwaway), tmp_path / "d")
    check_training_improves_it(make(throwaway), unit_rows_of(planted, 512))
    check_deterministic(throwaway, planted)
    with pytest.raises(NotImplementedError, match="not trained by gradient"):
        make(throwaway).loss(torch.randn(4, D_IN), StepState())
    page = docgen.dictionary_page(throwaway)  # documented: a generated page of its own
    assert "throwaway_fit" in page and "leading right singular vectors" in page
    assert "throwaway_fit" in docgen.dictionary_index()


def test_a_fit_variant_with_an_out_folder_saves_its_result_and_keeps_foreign_files(
        throwaway, planted, tmp_path):
    x = unit_rows_of(planted, 512)
    out = tmp_path / "run"
    fitted = saelab.fit(make(throwaway), x, saelab.TrainConfig(out=str(out), batch_size=128, progress=False))
    loaded = saelab.load(out / "sae")
    assert torch.equal(loaded.W_dec, fitted.W_dec)
    # how it was fitted and on what is recorded, as for a gradient run
    assert loaded.provenance["vectors_read"] == 512
    assert loaded.provenance["train"]["batch_size"] == 128
    assert loaded.provenance["data_kind"] == fitted.provenance["data_kind"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(saelab.errors.OutputExistsError, match="notes.txt"):
        saelab.fit(make(throwaway), x, saelab.TrainConfig(out=str(out), batch_size=128, progress=False))
    assert (out / "notes.txt").read_text() == "mine" and (out / "sae").is_dir()
