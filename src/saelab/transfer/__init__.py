"""Feature transfer across models by model stitching (Chen et al. 2025, "Transferring Linear
Features Across Language Models With Model Stitching").

Two models read the same text; their residual streams are paired at the tokens that end at the
same character offset (`align`, `paired_activations`: the two tokenizers may differ), affine maps
are fitted both ways by least squares and measured on held-out documents (`fit_stitch`), and a
dictionary, a linear probe or a steering vector of one model is carried to the other through
them (`transfer_dictionary`, `transfer_probe`, `transfer_direction`).

    >>> from saelab.models import load
    >>> a, b = load("smollm2-135m"), load("gemma3-270m")
    >>> pairs = paired_activations(a, "model.layers.10", b, "model.layers.6", docs)
    >>> stitch = fit_stitch(pairs.x_a, pairs.x_b, pairs.doc)
    >>> stitch.figures()["a_to_b"]["r2"]              # held-out explained variance
    >>> up, down = maps_from(stitch, "a")
    >>> gemma_sae = transfer_dictionary(smollm2_sae, up, down)

`saelab stitch` and `saelab transfer` are the same steps on the command line.
"""

from saelab.transfer.affine import AffineMap, Figures, Stitch, fit_affine, fit_stitch, measure
from saelab.transfer.align import Alignment, align_offsets
from saelab.transfer.features import Agreement, agreement, is_structural, kind_of
from saelab.transfer.paired import MIN_ALIGNED, Paired, paired_activations
from saelab.transfer.steps import (StitchConfig, TransferConfig, format_stitch, stitch_step,
                                   transfer_step)
from saelab.transfer.transfer import (Probe, init_for_training, maps_from, side_of,
                                      transfer_dictionary, transfer_direction, transfer_probe)

__all__ = ["MIN_ALIGNED", "Agreement", "AffineMap", "Alignment", "Figures", "Paired", "Probe",
           "Stitch", "StitchConfig", "TransferConfig", "agreement", "align_offsets",
           "fit_affine", "fit_stitch", "format_stitch", "init_for_training", "is_structural",
           "kind_of", "maps_from", "measure", "paired_activations", "side_of", "stitch_step",
           "transfer_dictionary", "transfer_direction", "transfer_probe", "transfer_step"]
