"""The one training loop, optimiser and schedule, dead-latent tracking, checkpoints."""

from saelab.train.config import TrainConfig
from saelab.train.data import Labelled
from saelab.train.loop import fit

__all__ = ["Labelled", "TrainConfig", "fit"]
