"""Checkpoints: weights, optimiser, RNG and loop state, as safetensors + JSON, written atomically.

A checkpoint folder holds cfg.json and weights.safetensors (the dictionary as trained, on
normalised inputs), train_state.safetensors (Adam moments, dead-latent counters, the run's
random stream) and train_state.json (step, input scale, run identity, optimiser param groups).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saelab._paths import atomic_path, write_json, write_safetensors
from saelab.errors import FormatError
from saelab.io.native import load_weights, save

STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"


def save_checkpoint(path: Path, dictionary, optimizer: torch.optim.Optimizer,
                    since_fired: torch.Tensor, rng, info: dict) -> None:
    """Write a checkpoint folder at `path` (replacing the previous one in one rename). `rng` is
    the run's RandomStream (train/run.py)."""
    opt = optimizer.state_dict()
    tensors = {"since_fired": since_fired, "rng": rng.cpu}
    if rng.cuda is not None:
        tensors["rng_cuda"] = rng.cuda
    for idx, state in opt["state"].items():
        for name, t in state.items():
            tensors[f"opt.{idx}.{name}"] = t if torch.is_tensor(t) else torch.tensor(t)
    with atomic_path(path) as tmp:
        save(dictionary, tmp)
        write_safetensors(tmp / STATE_TENSORS, tensors)
        write_json(tmp / STATE_JSON, {**info, "param_groups": opt["param_groups"]})


def read_info(path: Path) -> dict | None:
    """train_state.json of a checkpoint, or None when there is none."""
    file = path / STATE_JSON
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{file} is corrupt ({e}); delete {path} to restart the run") from None


def load_checkpoint(path: Path, dictionary, optimizer: torch.optim.Optimizer,
                    rng) -> torch.Tensor:
    """Restore weights, optimiser and the random stream `rng` (a RandomStream) from `path`;
    returns the dead-latent counters."""
    from saelab.io.native import load_state

    load_state(dictionary, load_weights(path / "weights.safetensors"), path)
    tensors = load_weights(path / STATE_TENSORS)
    info = read_info(path)
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    rng.cpu = tensors["rng"]
    if rng.cuda is not None and "rng_cuda" in tensors:
        rng.cuda = tensors["rng_cuda"]
    return tensors["since_fired"]
