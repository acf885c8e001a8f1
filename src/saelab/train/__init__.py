"""The one training loop, optimiser and schedule, dead-latent tracking, checkpoints."""

from saelab.train.config import TrainConfig
from saelab.train.data import Labelled, WithGradients
from saelab.train.loop import fit
from saelab.train.multi import LiveSource, fit_many

__all__ = ["Labelled", "LiveSource", "TrainConfig", "WithGradients", "fit", "fit_many"]
