"""Reference implementations for the benchmarks: SAELens and EleutherAI's sparsify.

Neither library is a saelab dependency; they are dev/bench extras, installed into folders of
their own and put on PYTHONPATH (see bench/README.md, "Reference implementations"). This module
trains a library's own implementation of a variant on the same data, with the same budget and
(as far as the library allows) the same settings as `saelab.fit` would, and returns the result
as a saelab dictionary, so that every benchmark can evaluate it with the same code.

    available()                     # {"saelens": "6.54.12", "sparsify": "unavailable: ..."}
    sae = train_reference("saelens", "topk", x, n_latents=1024, steps=3000, batch_size=1024,
                          lr=None, seed=0, fields={"k": 5}, dead_after_tokens=...)
    sae.provenance["train_seconds"]  # time spent in the library's training loop

What is shared with saelab's run (`saelab.fit` with the same TrainConfig):
- the data, in the same order: the batches of `saelab.store.tensor_batches(x, batch_size,
  seed)`, scaled to unit mean squared norm by saelab's factor (from the first 65,536 rows); the
  library never sees another scale, so the coefficients in `fields` mean the same thing to it,
  and the scale is folded back into the returned dictionary (`fold_input_scale`);
- steps, batch size, learning rate (saelab's default when lr is None), Adam (0.9, 0.999), the
  linear warm-up (min(100, steps // 10) steps) and linear decay to 0 over the last 20%;
- b_dec initialised to the mean of the first batch, as saelab (and sparsify's trainer) do;
- the sparsity target: k for the TopK family and MP; the penalty coefficient, its warm-up
  fraction (converted to steps), and for JumpReLU the bandwidth, initial threshold, sparsity form
  and tanh scale, all read from the saelab config that `fields` gives (saelab's defaults where
  `fields` says nothing);
- the initial decoder-row norm (SAELens's `decoder_init_norm`) is saelab's for that variant
  (1 for the unit-norm variants, 0.1 for ReLU's decoder-norm form); the rest of the
  initialisation is the library's;
- the dead-latent window: `dead_after_tokens` vectors (SAELens counts it in steps).

What stays the library's own (its recipe): its trainer and loss code, SAELens's gradient-norm
clipping at 1 and its AuxK (coefficient 1.0, not variance-normalised, no ReLU on the dead
latents' codes; saelab's 1/32 is relative to the residual's variance), SAELens's TopK selection on decoder-norm-scaled pre-activations
(`rescale_acts_by_decoder_norm`), its directly parameterised JumpReLU threshold, its Gated
auxiliary loss (decoder not frozen) and its decoder norms left free where saelab keeps them at 1.
bench/topk_recipe.py measures what those TopK differences do on planted recovery.

Each returned dictionary is checked against the library's own inference forward (SAELens: the
inference SAE its `process_state_dict_for_saving_inference` and inference config produce;
sparsify: `SparseCoder.encode` / `forward`) on 64 rows of x: codes and reconstructions must agree
(torch.testing.assert_close). Where saelab has no exact equivalent of the library's inference
behaviour, `train_reference` prints why and returns None.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import math
import os
import sys
import time
import types
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

import saelab
from saelab.store import tensor_batches
from saelab.train.optim import lr_factor

LIBRARIES = ("saelens", "sparsify")

# saelab variant -> the library's name for its own implementation of it
SAELENS_VARIANTS = {"topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu",
                    "gated": "gated", "matryoshka": "matryoshka_batchtopk", "relu": "standard",
                    "mp": "matching_pursuit"}
SPARSIFY_VARIANTS = {"topk": "topk"}

CHECK_ROWS = 64


# --- importing the libraries without their package __init__ -------------------------------------

def _bare_package(name: str) -> bool:
    """Register `name` as a namespace-like package over its folder, without running its
    __init__ (which for SAELens imports wandb and the whole LM-training stack); False if the
    package is not on sys.path."""
    if name in sys.modules:
        return True
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return False
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules[name] = pkg
    return True


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _wandb_stand_in() -> None:
    """SAELens's config and trainer modules `import wandb` at module level, but with
    `log_to_wandb=False` (what this module passes) they never log. Where wandb is not
    installed, this empty stand-in lets them import; every attribute is a no-op (the trainer
    still builds a wandb.Histogram in its sparsity-window log, which this module keeps from
    triggering by making the window longer than the run). It has a ModuleSpec (so
    importlib.util.find_spec works on it) but no distribution metadata, so libraries that probe
    for wandb (accelerate) still report it as absent."""
    if "wandb" in sys.modules or importlib.util.find_spec("wandb") is not None:
        return
    stub = types.ModuleType("wandb")
    stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    def no_op(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    stub.__getattr__ = no_op  # type: ignore[method-assign]
    sys.modules["wandb"] = stub


@functools.cache
def _saelens() -> types.SimpleNamespace:
    """SAELens's training SAEs, inference SAEs and trainer, imported past its __init__."""
    if not _bare_package("sae_lens"):
        raise ImportError("sae_lens is not on sys.path")
    pkg = sys.modules["sae_lens"]
    version = _version("sae-lens")
    # what the skipped __init__ defines and the submodules use
    pkg.__version__ = getattr(pkg, "__version__", version)
    pkg.logger = getattr(pkg, "logger", logging.getLogger("sae_lens"))
    mods = {m: importlib.import_module(f"sae_lens.saes.{m}") for m in
            ("sae", "standard_sae", "topk_sae", "batchtopk_sae", "jumprelu_sae", "gated_sae",
             "matryoshka_batchtopk_sae", "matching_pursuit_sae")}
    registry = importlib.import_module("sae_lens.registry")
    # the registrations its __init__ would have made (inference configs are found through them)
    for arch, module, inference, training in (
            ("standard", "standard_sae", "StandardSAE", "StandardTrainingSAE"),
            ("gated", "gated_sae", "GatedSAE", "GatedTrainingSAE"),
            ("topk", "topk_sae", "TopKSAE", "TopKTrainingSAE"),
            ("jumprelu", "jumprelu_sae", "JumpReLUSAE", "JumpReLUTrainingSAE"),
            ("batchtopk", "batchtopk_sae", None, "BatchTopKTrainingSAE"),
            ("matryoshka_batchtopk", "matryoshka_batchtopk_sae", None,
             "MatryoshkaBatchTopKTrainingSAE"),
            ("matching_pursuit", "matching_pursuit_sae", "MatchingPursuitSAE",
             "MatchingPursuitTrainingSAE")):
        m = mods[module]
        if inference and arch not in registry.SAE_CLASS_REGISTRY:
            registry.register_sae_class(arch, getattr(m, inference),
                                        getattr(m, inference + "Config"))
        if arch not in registry.SAE_TRAINING_CLASS_REGISTRY:
            registry.register_sae_training_class(arch, getattr(m, training),
                                                 getattr(m, training + "Config"))
    _wandb_stand_in()
    config = importlib.import_module("sae_lens.config")
    trainer = importlib.import_module("sae_lens.training.sae_trainer")
    return types.SimpleNamespace(version=version, registry=registry, config=config,
                                 trainer=trainer, **mods)


@functools.cache
def _sparsify() -> types.SimpleNamespace:
    """sparsify's SparseCoder and its config, imported past its __init__ (which imports the
    LM-training stack: transformers, datasets, ...)."""
    if not _bare_package("sparsify"):
        raise ImportError("sparsify is not on sys.path")
    if not torch.cuda.is_available():  # its Triton decoder is for CUDA; importable triton on a
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU would make it fail at run
    return types.SimpleNamespace(version=_version("eai-sparsify"),
                                 coder=importlib.import_module("sparsify.sparse_coder"),
                                 config=importlib.import_module("sparsify.config"))


_LOADERS = {"saelens": _saelens, "sparsify": _sparsify}


def available() -> dict[str, str]:
    """Every reference library -> its version if it imports, else "unavailable: <why>"."""
    out = {}
    for name, load in _LOADERS.items():
        try:
            out[name] = load().version
        except Exception as e:  # noqa: BLE001 - any import failure makes it unavailable
            out[name] = f"unavailable: {type(e).__name__}: {e}"
    return out


def implements(library: str, variant: str) -> str | None:
    """The library's name for its implementation of the saelab `variant`, or None."""
    return {"saelens": SAELENS_VARIANTS, "sparsify": SPARSIFY_VARIANTS}[library].get(variant)


# --- the shared run: data, scale, schedule -------------------------------------------------------

class _Run(types.SimpleNamespace):
    """What the reference run shares with saelab.fit: scaled batches, scale, schedule."""


class _Trained(NamedTuple):
    """A finished reference run."""

    sae: object | None
    """The saelab dictionary holding the library's weights (in scaled units), or None when
    saelab has no exact equivalent (`why` says why)."""
    theirs: Callable[[Tensor], tuple[Tensor, Tensor]]
    """The library's own inference: scaled rows -> (dense codes, reconstruction)."""
    seconds: float
    """Time spent in the library's training loop."""
    why: str | None
    module: nn.Module
    """The library's trained (inference) module."""


def _prepare(x: Tensor, steps: int, batch_size: int, lr: float | None, seed: int,
             dead_after_tokens: int | None) -> _Run:
    cfg = saelab.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                             progress=False, **({"dead_after_tokens": dead_after_tokens}
                                                if dead_after_tokens else {}))
    x = x.float()
    msn = float(x[:1 << 16].pow(2).sum(-1).mean())  # as saelab.train.data.from_tensor
    scale = 1.0 / math.sqrt(msn)
    source = tensor_batches(x, batch_size, seed)

    def batches():
        for (b,) in source.iterate(0):
            yield b * scale

    first = next(batches())
    return _Run(cfg=cfg, scale=scale, batches=batches, b_dec=first.mean(0), lr=cfg.learning_rate,
                warmup=min(cfg.warmup_steps, steps // 10), decay_start=cfg.decay_start,
                steps=steps, batch_size=batch_size, seed=seed,
                dead_after_tokens=cfg.dead_after_tokens)


def _template(variant: str, d_in: int, n_latents: int, fields: dict):
    """The saelab dictionary the result is copied into; its config holds the settings (saelab's
    defaults for whatever `fields` leaves out). Built without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        return saelab.create(variant, d_in=d_in, n_latents=n_latents, **fields)


def _ramp_steps(fraction: float, steps: int) -> int:
    return max(0, round(fraction * steps))


# --- SAELens -------------------------------------------------------------------------------------

def _saelens_config(sl, variant: str, tpl, run: _Run):
    """SAELens training config for `variant`, mirroring the saelab template's settings."""
    c = tpl.cfg
    common = {"d_in": tpl.d_in, "d_sae": tpl.n_latents, "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": True, "normalize_activations": "none",
              "decoder_init_norm": float(tpl.W_dec.detach().norm(dim=1).mean())}
    if variant == "topk":
        return sl.topk_sae.TopKTrainingSAEConfig(k=c.k, **common)
    if variant == "batchtopk":
        return sl.batchtopk_sae.BatchTopKTrainingSAEConfig(
            k=float(c.k), topk_threshold_lr=1 - c.threshold_decay, **common)
    if variant == "matryoshka":
        from saelab.dictionaries.matryoshka import THRESHOLD_DECAY
        return sl.matryoshka_batchtopk_sae.MatryoshkaBatchTopKTrainingSAEConfig(
            k=float(c.k), matryoshka_widths=list(c.prefixes), topk_threshold_lr=1 - THRESHOLD_DECAY,
            **common)
    if variant == "relu":  # SAELens "standard": L1 of codes x decoder-row norms, free decoder
        return sl.standard_sae.StandardTrainingSAEConfig(
            l1_coefficient=c.l1_coeff, lp_norm=1.0,
            l1_warm_up_steps=_ramp_steps(c.l1_warmup, run.steps), **common)
    if variant == "gated":
        return sl.gated_sae.GatedTrainingSAEConfig(
            l1_coefficient=c.l1_coeff, l1_warm_up_steps=_ramp_steps(c.l1_warmup, run.steps),
            **common)
    if variant == "jumprelu":
        return sl.jumprelu_sae.JumpReLUTrainingSAEConfig(
            jumprelu_init_threshold=c.threshold_init, jumprelu_bandwidth=c.bandwidth,
            jumprelu_sparsity_loss_mode=c.sparsity, l0_coefficient=c.l0_coeff,
            l0_warm_up_steps=_ramp_steps(c.l0_warmup, run.steps),
            jumprelu_tanh_scale=c.tanh_scale, **common)
    if variant == "mp":  # k pursuit steps, no early stop: saelab's MP with residual_tol 0
        common["decoder_init_norm"] = 1.0  # SAELens requires it for MP
        return sl.matching_pursuit_sae.MatchingPursuitTrainingSAEConfig(
            residual_threshold=0.0, max_iterations=c.k, stop_on_duplicate_support=False,
            **common)
    raise AssertionError(variant)


def _saelens_unsupported(variant: str, tpl) -> str | None:
    """Why the saelab variant as configured has no SAELens counterpart (None if it has)."""
    if variant == "mp" and tpl.cfg.selection != "positive":
        return "SAELens's matching pursuit only selects positive inner products"
    if variant == "mp" and tpl.cfg.residual_tol > 0:
        return ("saelab's residual_tol is relative to |x - b_dec|, SAELens's residual_threshold "
                "absolute: no equivalent setting")
    if tpl.d_out != tpl.d_in:
        return "SAELens's SAEs reconstruct their input (d_out == d_in)"
    return None


def _saelens_train(variant: str, x: Tensor, tpl, run: _Run):
    sl = _saelens()
    cfg = _saelens_config(sl, variant, tpl, run)
    training_cls = sl.registry.get_sae_training_class(cfg.architecture())[0]
    torch.manual_seed(run.seed)
    sae = training_cls(cfg)
    with torch.no_grad():
        sae.b_dec.copy_(run.b_dec)
    decay = run.steps - int(run.decay_start * run.steps)
    trainer_cfg = sl.config.SAETrainerConfig(
        total_training_samples=run.steps * run.batch_size,
        train_batch_size_samples=run.batch_size, lr=run.lr, lr_end=run.lr,
        lr_scheduler_name="constant", lr_warm_up_steps=run.warmup if run.warmup > 1 else 0,
        lr_decay_steps=decay, adam_beta1=0.9, adam_beta2=0.999, device="cpu", autocast=False,
        dead_feature_window=max(1, run.dead_after_tokens // run.batch_size),
        feature_sampling_window=run.steps + 1,  # no sparsity-window log (it builds wandb plots)
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=sl.config.LoggingConfig(log_to_wandb=False))
    trainer = sl.trainer.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=run.batches())
    t = time.time()
    with _quiet_tqdm(sl.trainer):
        sae = trainer.fit()
    seconds = time.time() - t
    assert trainer.n_training_steps == run.steps, (trainer.n_training_steps, run.steps)

    # the library's own inference SAE, exactly as it would save it
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    inference_dict = sae.cfg.get_inference_sae_cfg_dict()
    inference_cls, inference_cfg_cls = sl.registry.get_sae_class(inference_dict["architecture"])
    inference = inference_cls(inference_cfg_cls.from_dict(inference_dict))
    inference.load_state_dict(state)
    inference.eval()

    def theirs(rows: Tensor) -> tuple[Tensor, Tensor]:
        codes = inference.encode(rows)
        return codes, inference.decode(codes)

    if variant == "mp":
        norms = state["W_dec"].norm(dim=1)
        if float((norms - 1).abs().max()) > 1e-4:
            why = (f"its trainer leaves the decoder rows free (norms {float(norms.min()):.3f}-"
                   f"{float(norms.max()):.3f} after training) and its pursuit codes with raw "
                   f"inner products, where saelab's MP uses normalised ones: no exact saelab "
                   f"equivalent")
            return _Trained(None, theirs, seconds, why, inference)
    return _Trained(_copy_saelens(variant, tpl, state), theirs, seconds, None, inference)


def _copy_saelens(variant: str, tpl, state: dict):
    """Copy SAELens's inference weights ([d_in, d_sae] encoder) into the saelab template."""
    p = {name: t.float() for name, t in state.items()}
    with torch.no_grad():
        tpl.W_dec.copy_(p["W_dec"])
        tpl.b_dec.copy_(p["b_dec"])
        if variant != "mp":
            tpl.W_enc.copy_(p["W_enc"].T)
        if variant in ("topk", "relu", "jumprelu", "batchtopk", "matryoshka"):
            tpl.b_enc.copy_(p["b_enc"])
        if variant == "gated":
            for name in ("b_gate", "r_mag", "b_mag"):
                getattr(tpl, name).copy_(p[name])
        if variant == "jumprelu":
            # SAELens gates with relu(pre) * (pre > theta), theta >= 0 (clamped in training);
            # saelab with pre * (pre > theta): the same for theta >= 0. theta = 0 becomes the
            # smallest normal float, whose log is finite.
            tiny = torch.finfo(torch.float32).tiny
            tpl.log_threshold.copy_(p["threshold"].clamp_min(tiny).log())
        if variant in ("batchtopk", "matryoshka"):
            # saved as a JumpReLU whose thresholds all equal the global BatchTopK threshold
            theta = p["threshold"]
            assert torch.equal(theta, theta[:1].expand_as(theta)), "per-latent thresholds"
            tpl.threshold.copy_(theta[0])
            if variant == "batchtopk":
                tpl.threshold_batches.fill_(1)
    return tpl


@contextlib.contextmanager
def _quiet_tqdm(module):
    """Turn off the progress bar SAELens's trainer always shows (module-level name `tqdm`)."""
    original = module.tqdm
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


# --- sparsify ------------------------------------------------------------------------------------

def _sparsify_train(variant: str, x: Tensor, tpl, run: _Run):
    """sparsify's TopK SparseCoder, trained as its Trainer does (decoder set to unit norm before
    each step, FVU loss, AuxK on latents dead for the window, gradient parallel to the decoder
    rows removed, Adam), with saelab's schedule; sparsify's Trainer needs a language model, so
    its loop is reproduced here around the library's own module and loss."""
    sp = _sparsify()
    torch.manual_seed(run.seed)
    sae = sp.coder.SparseCoder(tpl.d_in, sp.config.SparseCoderConfig(
        num_latents=tpl.n_latents, k=tpl.cfg.k))
    with torch.no_grad():
        sae.b_dec.copy_(run.b_dec)
    opt = torch.optim.Adam(sae.parameters(), lr=run.lr)
    since = torch.zeros(tpl.n_latents, dtype=torch.long)
    batches = run.batches()
    t = time.time()
    for step in range(run.steps):
        batch = next(batches)
        for group in opt.param_groups:
            group["lr"] = run.lr * lr_factor(step, run.steps, run.warmup, run.decay_start)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(batch, dead_mask=since >= run.dead_after_tokens)
        (out.fvu + tpl.cfg.auxk_coeff * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since += batch.shape[0]
        since[out.latent_indices.flatten().unique()] = 0
    seconds = time.time() - t
    sae.eval()
    with torch.no_grad():
        tpl.W_enc.copy_(sae.encoder.weight)  # [num_latents, d_in], as saelab's
        tpl.b_enc.copy_(sae.encoder.bias)
        tpl.W_dec.copy_(sae.W_dec)
        tpl.b_dec.copy_(sae.b_dec)

    def theirs(rows: Tensor) -> tuple[Tensor, Tensor]:
        acts, indices, _ = sae.encode(rows)
        codes = rows.new_zeros(rows.shape[0], tpl.n_latents).scatter_(1, indices, acts)
        return codes, sae(rows).sae_out

    return _Trained(tpl, theirs, seconds, None, sae)


# --- the entry point -----------------------------------------------------------------------------

class LibraryForward(saelab.Dictionary):
    """A library's trained module behind the saelab Dictionary interface, for evaluation only,
    where saelab has no exact equivalent of its inference (`train_reference(...,
    wrap_unmatched=True)`). Not registered and not trainable: encode and decode call the
    library's own inference on inputs scaled as in training, and undo the scale. `W_dec` and
    `b_dec` are copies in input units (for recovery metrics)."""

    architecture = "reference"

    def __init__(self, theirs: Callable[[Tensor], tuple[Tensor, Tensor]], module: nn.Module,
                 W_dec: Tensor, b_dec: Tensor, scale: float, name: str):
        n_latents, d = W_dec.shape
        super().__init__(saelab.dictionaries.DictionaryConfig(d_in=d, n_latents=n_latents))
        self.theirs, self.module, self.scale, self.name = theirs, module, scale, name
        self.register_buffer("W_dec", W_dec.detach().float().clone())
        self.register_buffer("b_dec", b_dec.detach().float() / scale)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.theirs(x * self.scale)[0] / self.scale

    @torch.no_grad()
    def forward(self, x: Tensor) -> saelab.dictionaries.Output:
        codes, x_hat = self.theirs(x * self.scale)
        return saelab.dictionaries.Output(x_hat / self.scale, codes / self.scale)

    def decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name}: decode through forward(x) (the library's "
                                  f"inference may not be a linear decoder of these codes)")

    def extra_repr(self) -> str:
        return f"reference={self.name!r}, d_in={self.d_in}, n_latents={self.n_latents}"


def _skip(library: str, variant: str, why: str) -> None:
    print(f"reference {library} {variant}: skipped, {why}")


@torch.no_grad()
def _check(sae, theirs, x: Tensor, scale: float, library: str, variant: str) -> None:
    """saelab's eval-mode encode/decode on raw rows must match the library's own inference on
    the same rows, scaled as it was trained (its outputs are in scaled units)."""
    rows = x[:CHECK_ROWS].float()
    sae.eval()
    codes = sae.encode(rows)
    x_hat = sae.decode(codes)
    their_codes, their_x_hat = theirs(rows * scale)
    for name, ours, ref in (("codes", codes, their_codes / scale),
                            ("reconstruction", x_hat, their_x_hat / scale)):
        atol = 1e-4 * float(ref.abs().max()) + 1e-6
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=atol, msg=lambda m, name=name: (
            f"{library} {variant}: saelab {name} differ from the library's own inference "
            f"after conversion:\n{m}"))


def train_reference(library: str, variant: str, x: Tensor, *, n_latents: int, steps: int,
                    batch_size: int, lr: float | None = None, seed: int = 0,
                    fields: dict | None = None, dead_after_tokens: int | None = None,
                    wrap_unmatched: bool = False):
    """Train `library`'s own implementation of the saelab `variant` on `x` [N, d] and return it
    as an equivalent saelab dictionary (eval mode, in the units of x), or None (with a printed
    reason) when the library is missing, lacks the variant, or saelab has no exact equivalent of
    what it trained (with `wrap_unmatched=True`, that last case returns a `LibraryForward`
    around the library's own inference instead).

    Budget and settings are saelab.fit's for TrainConfig(steps, batch_size, lr, seed,
    dead_after_tokens) and saelab.create(variant, ..., **fields): see the module docstring.
    `provenance` of the result records the library, its version, its name for the variant and
    the seconds its training loop took (`train_seconds`).
    """
    fields = dict(fields or {})
    if library not in LIBRARIES:
        raise ValueError(f"unknown reference library {library!r}; known: {', '.join(LIBRARIES)}")
    version = available()[library]
    if version.startswith("unavailable"):
        _skip(library, variant, version + " (see bench/README.md)")
        return None
    theirs_name = implements(library, variant)
    if theirs_name is None:
        _skip(library, variant, f"{library} has no implementation of it")
        return None
    if variant not in saelab.architectures():
        _skip(library, variant, "not registered in saelab yet")
        return None
    tpl = _template(variant, x.shape[1], n_latents, fields)
    if library == "saelens":
        why = _saelens_unsupported(variant, tpl)
        if why:
            _skip(library, variant, why)
            return None
    run = _prepare(x, steps, batch_size, lr, seed, dead_after_tokens)
    train = _saelens_train if library == "saelens" else _sparsify_train
    done = train(variant, x, tpl, run)
    if done.sae is not None:
        sae = done.sae
        sae.fold_input_scale(run.scale)
    elif wrap_unmatched:
        print(f"reference {library} {variant}: {done.why}; evaluated through the library's own "
              f"inference (LibraryForward)")
        W_dec = dict(done.module.named_parameters())["W_dec"]
        sae = LibraryForward(done.theirs, done.module, W_dec,
                             dict(done.module.named_parameters())["b_dec"], run.scale,
                             f"{library}:{theirs_name}")
    else:
        _skip(library, variant, done.why)
        return None
    sae.eval()
    if not isinstance(sae, LibraryForward):
        _check(sae, done.theirs, x, run.scale, library, variant)
    sae.provenance = {"reference": library, "reference_version": version,
                      "reference_variant": theirs_name, "train_seconds": done.seconds,
                      "steps": steps, "batch_size": batch_size, "lr": run.lr,
                      "input_scale": run.scale, "seed": seed}
    return sae


def saelens_step(variant: str, tpl, first_batch: Tensor, steps: int, batch_size: int,
                 lr: float | None = None):
    """SAELens's training SAE for the saelab template `tpl`'s settings, and one step of its own
    trainer (`SAETrainer._train_step`: forward, dead-latent counting, backward, gradient clipping,
    Adam, schedulers), for timing: returns (sae, step(x)). The batches are taken as already
    scaled."""
    sl = _saelens()
    run = _Run(steps=steps, batch_size=batch_size, seed=0, b_dec=first_batch.mean(0),
               lr=lr or saelab.TrainConfig(batch_size=batch_size).learning_rate, warmup=0,
               decay_start=0.8, dead_after_tokens=10 * batch_size)
    cfg = _saelens_config(sl, variant, tpl, run)
    sae = sl.registry.get_sae_training_class(cfg.architecture())[0](cfg)
    with torch.no_grad():
        sae.b_dec.copy_(run.b_dec)
    trainer_cfg = sl.config.SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
        lr=run.lr, lr_end=run.lr, lr_scheduler_name="constant", lr_warm_up_steps=0,
        lr_decay_steps=0, adam_beta1=0.9, adam_beta2=0.999, device="cpu", autocast=False,
        dead_feature_window=10, feature_sampling_window=steps + 1, n_checkpoints=0,
        checkpoint_path=None, save_final_checkpoint=False,
        logger=sl.config.LoggingConfig(log_to_wandb=False))
    trainer = sl.trainer.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))

    def step(x: Tensor) -> float:
        out = trainer._train_step(sae, x)
        trainer.n_training_steps += 1
        return float(out.feature_acts.bool().sum(-1).float().mean())  # L0 of the step

    return sae, step
