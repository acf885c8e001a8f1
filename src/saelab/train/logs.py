"""Where the training metrics go (`TrainConfig.log_to`): metrics.jsonl in the run folder (the
default), TensorBoard event files in `out/tensorboard/`, Weights & Biases. Every destination
gets the same rows (step, lr, tokens, dead_fraction, loss terms, metrics). TensorBoard and
W&B are optional extras, imported only when asked for."""

from __future__ import annotations

import json
import os
from importlib import import_module
from pathlib import Path

from saelab.errors import ConfigError


def require(module: str, extra: str):
    """Import `module` of the optional extra `extra`, or say how to install it."""
    try:
        return import_module(module)
    except ImportError:
        raise ConfigError(f"log_to {extra}: the {extra} package is not installed; "
                          f"pip install saelab[{extra}] (or pip install {extra})") from None


def check_log_to(kinds: list[str], out: Path | None) -> None:
    """Refuse, before any work, destinations whose package is missing or that need `out`."""
    if "tensorboard" in kinds:
        if out is None:
            raise ConfigError("log_to tensorboard writes its event files in the run folder; "
                              "set out")
        require("torch.utils.tensorboard", "tensorboard")
    if "wandb" in kinds:
        require("wandb", "wandb")


class JsonlLog:
    """metrics.jsonl in the run folder, one JSON object per line. A resumed run first drops
    the lines past its checkpoint step (they will be logged again); the line of that step stays."""

    def __init__(self, out: Path, resumed_at: int | None):
        file = out / "metrics.jsonl"
        if resumed_at is not None and file.exists():
            lines = [ln for ln in file.read_text().splitlines()
                     if ln.strip() and json.loads(ln)["step"] <= resumed_at]
            file.write_text("".join(ln + "\n" for ln in lines))
        self.file = open(file, "a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorboardLog:
    """Scalars through torch.utils.tensorboard's SummaryWriter, in `out/tensorboard/`."""

    def __init__(self, out: Path):
        tb = require("torch.utils.tensorboard", "tensorboard")
        self.writer = tb.SummaryWriter(log_dir=str(out / "tensorboard"))

    def write(self, row: dict) -> None:
        for name, value in row.items():
            if name not in ("step", "hookpoint") and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    """One Weights & Biases run per dictionary (project $WANDB_PROJECT, else "saelab"), its
    config the run identity."""

    def __init__(self, out: Path | None, name: str, identity: dict):
        wandb = require("wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "saelab"), name=name,
                              config=identity, dir=str(out) if out else None,
                              reinit="create_new")

    def write(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k not in ("step", "hookpoint")},
                     step=row["step"])

    def close(self) -> None:
        self.run.finish()


class Logs:
    """Every destination of one run's metrics (none on ranks other than 0)."""

    def __init__(self, kinds: list[str], out: Path | None, name: str, identity: dict,
                 main: bool = True, resumed_at: int | None = None):
        self.sinks: list = []
        if not main:
            return
        check_log_to(kinds, out)
        for kind in kinds:
            if kind == "jsonl" and out is not None:
                self.sinks.append(JsonlLog(out, resumed_at))
            elif kind == "tensorboard":
                self.sinks.append(TensorboardLog(out))
            elif kind == "wandb":
                self.sinks.append(WandbLog(out, name, identity))

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink.write(row)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> Logs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
