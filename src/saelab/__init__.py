"""saelab: sparse dictionary learning on neural-network activations."""

__version__ = "0.1.0"

from saelab.dictionaries import Dictionary, create  # noqa: E402
from saelab.dictionaries import names as architectures  # noqa: E402
from saelab.errors import SaelabError  # noqa: E402
from saelab.evaluate import evaluate  # noqa: E402
from saelab.io import load  # noqa: E402
from saelab.train import TrainConfig, fit  # noqa: E402

__all__ = ["__version__", "Dictionary", "SaelabError", "TrainConfig", "architectures", "create",
           "evaluate", "fit", "load"]
