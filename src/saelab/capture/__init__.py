"""Activation capture from any PyTorch model with forward hooks.

A hookpoint is a module name or a pattern (`model.layers.*.mlp`: `*` matches one dotted part,
`**` any number of them) plus a site:
- `output`: what the module returns (first element when it returns a tuple),
- `input`: the first positional (or `hidden_states`) argument the module receives,
- `delta`: output - input (what a residual block adds),
- `z`: on an attention module, the per-head outputs before the output projection, heads
  concatenated (Kissane et al. 2024, "Interpreting Attention Layer Outputs with Sparse
  Autoencoders"); it resolves to the `input` site of that module's output projection.
Written as `NAME` (site output) or `NAME:SITE`. The same spec drives capture, splicing and
steering. When every hookpoint has been seen, the forward is stopped early: layers after the last
hookpoint are never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from saelab.errors import ConfigError

SITES = ("output", "input", "delta")
ALIASES = ("z",)
BATCH_CONTEXTS = 8
"""Default of every `batch_contexts`: contexts per model forward when capturing or splicing."""
OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "dense", "proj")
"""Names of an attention module's output projection across model families."""


@dataclass(frozen=True)
class Hookpoint:
    """A module (name or pattern) and the site of it whose activation is read."""

    module: str
    site: str = "output"

    def __post_init__(self) -> None:
        if self.site not in SITES + ALIASES:
            raise ConfigError(f"unknown hookpoint site {self.site!r} in {self.module!r}; "
                              f"sites: {', '.join(SITES + ALIASES)}")

    @property
    def key(self) -> str:
        """Canonical string: `module` for the output site, `module:site` otherwise."""
        return self.module if self.site == "output" else f"{self.module}:{self.site}"

    @classmethod
    def parse(cls, spec: "str | Hookpoint") -> "Hookpoint":
        if isinstance(spec, Hookpoint):
            return spec
        module, _, site = str(spec).partition(":")
        if not module:
            raise ConfigError(f"empty module name in hookpoint {spec!r}")
        return cls(module, site or "output")


def resolve(model: nn.Module, specs: Iterable[str | Hookpoint]) -> list[Hookpoint]:
    """Expand patterns into concrete hookpoints, in module order; unknown names are an error."""
    names = [name for name, _ in model.named_modules() if name]
    out: list[Hookpoint] = []
    for spec in specs:
        hp = Hookpoint.parse(spec)
        regex = module_pattern(hp.module)
        matched = [n for n in names if regex.fullmatch(n)]
        if not matched:
            close = [n for n in names if hp.module.split(".")[-1] in n][:5]
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise ConfigError(f"no module of the model matches hookpoint {hp.module!r}.{hint} "
                              f"List them with `saelab hookpoints MODEL`.")
        out.extend(_z_site(model, n) if hp.site == "z" else Hookpoint(n, hp.site)
                   for n in matched)
    order = {n: i for i, n in enumerate(names)}
    return sorted(dict.fromkeys(out), key=lambda h: (order[h.module], SITES.index(h.site)))


def _z_site(model: nn.Module, attention: str) -> Hookpoint:
    """The `z` site of an attention module: the input of its output projection (a Linear)."""
    modules = dict(model.named_modules())
    for suffix in OUTPUT_PROJECTIONS:
        for name in (f"{attention}.{suffix}", f"{attention}.output.{suffix}"):
            if isinstance(modules.get(name), nn.Linear):
                return Hookpoint(name, "input")
    raise ConfigError(f"site 'z' needs an attention module with an output projection "
                      f"({', '.join(OUTPUT_PROJECTIONS)}); {attention!r} has none. Name the "
                      f"projection yourself with the 'input' site")


def module_pattern(pattern: str) -> re.Pattern:
    """Compile a module pattern: `*` is one dotted part, `**` any run of characters (match it
    with `fullmatch`)."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts))


class _StopForward(Exception):
    """Raised inside a hook once every hookpoint has been captured."""


def first_tensor(value) -> Tensor:
    """The activation tensor in what a module returns: the tensor itself, the first element of a
    tuple or list, or a model output's `last_hidden_state`."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"cannot find an activation tensor in a {type(value).__name__}")


def module_input(args: tuple, kwargs: dict) -> Tensor:
    """The input activation of a module call: its first positional tensor, else its
    `hidden_states` keyword, else its first tensor keyword."""
    if args:
        return first_tensor(args)
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return first_tensor(tuple(v for v in kwargs.values() if isinstance(v, Tensor)))


class Capture:
    """Context manager that records hookpoint activations during forwards of `model`.

    >>> with Capture(model, ["model.layers.15"]) as cap:
    ...     cap.run(input_ids=ids)          # stops after layer 15
    >>> cap.acts["model.layers.15"]         # [B, T, d]
    """

    def __init__(self, model: nn.Module, hookpoints: Iterable[str | Hookpoint],
                 stop_early: bool = True):
        self.model = model
        self.hookpoints = resolve(model, hookpoints)
        self.stop_early = stop_early
        self.acts: dict[str, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "Capture":
        modules = dict(self.model.named_modules())
        by_module: dict[str, list[Hookpoint]] = {}
        for hp in self.hookpoints:
            by_module.setdefault(hp.module, []).append(hp)
        for name, hps in by_module.items():
            self._handles.append(modules[name].register_forward_hook(
                self._make_hook(hps), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, hps: list[Hookpoint]):
        def hook(module, args, kwargs, output):
            out = first_tensor(output)
            for hp in hps:
                if hp.site == "output":
                    value = out
                else:
                    inp = module_input(args, kwargs)
                    value = inp if hp.site == "input" else out - inp
                self.acts[hp.key] = value.detach()
            if self.stop_early and len(self.acts) == len(self.hookpoints):
                raise _StopForward
        return hook

    @torch.no_grad()
    def run(self, *args, **kwargs) -> dict[str, Tensor]:
        """Run a forward (stopped early after the last hookpoint); returns the activations."""
        self.acts = {}
        try:
            self.model(*args, **kwargs)
        except _StopForward:
            pass
        missing = [hp.key for hp in self.hookpoints if hp.key not in self.acts]
        if missing:
            raise ConfigError(f"hookpoints never ran during the forward: {', '.join(missing)}")
        return self.acts


def capture(model: nn.Module, hookpoints: Iterable[str | Hookpoint], input_ids: Tensor,
            stop_early: bool = True, **kwargs) -> dict[str, Tensor]:
    """One forward of `input_ids`; the activation [B, T, d] of each hookpoint by key."""
    with Capture(model, hookpoints, stop_early) as cap:
        return cap.run(input_ids=input_ids, **kwargs)
