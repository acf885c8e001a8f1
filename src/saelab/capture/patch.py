"""Replacing activations during a forward: the shared mechanism of splicing and steering."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from torch import Tensor, nn

from saelab.capture import Hookpoint, first_tensor, module_input, resolve


def _replace_output(output, new: Tensor):
    if isinstance(output, Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise TypeError(f"cannot patch a module returning {type(output).__name__}")


@contextlib.contextmanager
def patch(model: nn.Module, hookpoint: str | Hookpoint, fn: Callable[[Tensor], Tensor]
          ) -> Iterator[None]:
    """While active, the activation at `hookpoint` ([B, T, d]) is replaced by `fn(activation)`.

    Site `output` replaces what the module returns; `input` what it receives; `delta` keeps the
    input and replaces what the module adds to it.
    """
    (hp,) = resolve(model, [hookpoint])
    module = dict(model.named_modules())[hp.module]
    if hp.site == "input":
        def pre_hook(mod, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(mod, args, kwargs, output):
            out = first_tensor(output)
            if hp.site == "output":
                return _replace_output(output, fn(out))
            inp = module_input(args, kwargs)
            return _replace_output(output, inp + fn(out - inp))
        handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
