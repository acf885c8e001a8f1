"""Conformance of every registered metric family on a tiny random Llama: it declares itself
(docstring, needs from the vocabulary, figures), is refused before any work when a need is
missing, and returns exactly its declared figures, all finite but those it declares conditional
(NaN unless a condition its docstring states holds). A family written in a new module is
discovered by itself."""

from __future__ import annotations

import importlib
import math
import sys
import textwrap

import pytest
import torch

import saelab
from saelab.capture import capture
from saelab.data.labelled import LabelledTexts
from saelab.errors import ConfigError
from saelab.evaluate import NEEDS, Family, families, family, register
from tests.conftest import tiny_llama

PACKAGE = importlib.import_module("saelab.evaluate")  # saelab.evaluate is also the function
registry = importlib.import_module("saelab.evaluate._registry")
HOOKPOINT = "model.layers.0"
ARGUMENT = {"activations": "data", "model": "model", "tokens": "tokens", "labels": "labels",
            "other": "other", "images": "data"}
"""The `evaluate` argument that provides each need."""


def word_tokenizer(size: int):
    """A word-level tokenizer of `size` tokens: the first-letter prompt's pieces, the answers
    " A" ... " Z", and made-up words starting with a or b."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "\n", " has", " the", " first", " letter", ":"]
                                        + [f" {c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"])}
    while len(vocab) < size:
        n = len(vocab)
        vocab[" " + "ab"[n % 2] + "".join("abcdefghij"[int(d)] for d in str(n))] = n
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|\n|:"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


class Watched:
    """An iterable of activation batches that records whether anyone read it."""

    def __init__(self, x: torch.Tensor):
        self.x, self.read = x, False

    def __iter__(self):
        self.read = True
        return iter(self.x.split(64))


@pytest.fixture(scope="module")
def setup():
    """A tiny 2-layer Llama, its layer-0 activations, an SAE on them and a second one."""
    lm = tiny_llama(vocab=100, hidden=32, layers=2)
    lm.tokenizer = word_tokenizer(100)  # absorption reads the model's vocabulary
    tokens = torch.randint(2, 100, (6, 16), generator=torch.Generator().manual_seed(0))
    x = capture(lm, [HOOKPOINT], tokens)[HOOKPOINT].flatten(0, 1)  # [96, 32]
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=1)
    other = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=2)
    # labels: texts of two classes, tokenized already (the tiny Llama has no tokenizer)
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(2, 100, (int(n),), generator=g).tolist()
           for n in torch.randint(4, 17, (40,), generator=g)]
    labels = LabelledTexts([f"text {i}" for i in range(40)], ["ab"[i % 2] for i in range(40)],
                           tokens=ids)
    provided = {"data": x, "model": lm, "tokens": tokens, "labels": labels, "other": other}
    return sae, provided


class Forwards:
    """Counts the forwards of some modules while in a `with` block."""

    def __init__(self, *modules: torch.nn.Module):
        self.modules, self.count, self.handles = modules, 0, []

    def __enter__(self) -> "Forwards":
        self.handles = [m.register_forward_pre_hook(self.seen) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def seen(self, *_) -> None:
        self.count += 1


def check_family(name: str, sae, provided: dict) -> None:
    """The conformance checks of one family (shared with the throwaway family below), given
    everything `evaluate` can be given."""
    cls = family(name)
    assert cls.name == name and (cls.__doc__ or "").strip(), f"{name} needs a docstring"
    assert cls.needs and set(cls.needs) <= set(NEEDS)
    assert cls.figures and len(set(cls.figures)) == len(cls.figures)
    assert set(cls.headline) <= set(cls.figures) and set(cls.conditional) <= set(cls.figures)
    report = saelab.evaluate(sae, metrics=(name,), hookpoint=HOOKPOINT, **provided)
    assert set(report) == {name, "meta"}
    assert set(report[name]) == set(cls.figures)
    bad = {k: v for k, v in report[name].items()
           if not math.isfinite(v) and k not in cls.conditional}
    assert not bad, f"{name}: figures not finite: {bad}"
    assert report["meta"]["families"] == [name]


@pytest.mark.parametrize("name", [n for n in families() if "images" not in family(n).needs])
def test_family_returns_exactly_its_declared_finite_figures(setup, name):
    """(Families that need an image store are run on one in their own tests, e.g.
    tests/evaluate/test_monosemanticity.py.)"""
    sae, provided = setup
    check_family(name, sae, provided)


@pytest.mark.parametrize("name", families())
def test_a_missing_need_is_refused_before_any_work(setup, name):
    sae, provided = setup
    cls = family(name)
    for need in sorted(cls.needs):
        watched = Watched(provided["data"])
        kwargs = {ARGUMENT[n]: provided[ARGUMENT[n]] for n in cls.needs}
        kwargs["data"] = watched if "activations" in cls.needs else None
        kwargs[ARGUMENT[need]] = None
        with Forwards(sae, provided["model"], provided["other"]) as forwards:
            with pytest.raises(ConfigError) as err:
                saelab.evaluate(sae, metrics=(name,), hookpoint=HOOKPOINT, **kwargs)
        message = str(err.value)
        assert repr(name) in message and f"{ARGUMENT[need]}:" in message, message
        assert forwards.count == 0 and not watched.read, f"{name} did work before refusing"


THROWAWAY = '''
"""A family written by a user: the mean norm of the inputs."""

from saelab.evaluate import Family, register


@register("throwaway_norm")
class ThrowawayNorm(Family):
    """Mean input norm (a test family)."""

    needs = frozenset({"activations"})
    figures = ("mean_norm",)
    headline = ("mean_norm",)

    def __init__(self, context):
        super().__init__(context)
        self.total, self.n = 0.0, 0

    def update(self, x, target, output):
        self.total += float(x.norm(dim=-1).sum())
        self.n += x.shape[0]

    def result(self):
        return {"mean_norm": self.total / self.n}
'''


def test_a_family_in_a_new_module_is_discovered_and_conforms(setup, tmp_path, monkeypatch):
    sae, provided = setup
    (tmp_path / "throwaway_norm.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.setattr(PACKAGE, "__path__", [*PACKAGE.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    try:
        assert "throwaway_norm" not in registry._FAMILIES  # not imported by anyone yet
        assert "throwaway_norm" in families()
        check_family("throwaway_norm", sae, provided)
        report = saelab.evaluate(sae, provided["data"], metrics=("throwaway_norm",))
        expected = provided["data"].norm(dim=-1).mean().item()
        assert report["throwaway_norm"]["mean_norm"] == pytest.approx(expected, rel=1e-5)
    finally:
        sys.modules.pop("saelab.evaluate.throwaway_norm", None)
        if hasattr(PACKAGE, "throwaway_norm"):
            delattr(PACKAGE, "throwaway_norm")


def test_a_family_declaring_an_unknown_need_is_refused_at_registration(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    class Bad(Family):
        """Needs something no one can give."""

        needs = frozenset({"activations", "telepathy"})
        figures = ("x",)

    with pytest.raises(ValueError, match="telepathy"):
        register("bad")(Bad)
