"""The one training loop (one dictionary or many, data or layer parallel), its run state,
optimiser and schedule, dead-latent tracking, metrics logs, checkpoints."""

from saelab.store.sources import Labelled, LiveSource, WithGradients
from saelab.train.config import TrainConfig
from saelab.train.loop import fit, fit_many
from saelab.train.members import run_folder
from saelab.train.run import Run

__all__ = ["Labelled", "LiveSource", "Run", "TrainConfig", "WithGradients", "fit", "fit_many",
           "run_folder"]
