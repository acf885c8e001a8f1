"""Images into a model's `pixel_values` with the model's own image processor, and back.

    >>> pixels = pixel_values(items[:8], vit.processor)      # [8, 3, 224, 224]
    >>> shown = displayed_images(pixels, vit.processor)      # uint8 [8, 224, 224, 3]

`displayed_images` undoes the processor's normalisation, giving the image as the model saw it
(resized and cropped): the picture a patch heat map is drawn over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from saelab.data.images import ImageItem, open_image
from saelab.errors import ConfigError


def pixel_values(items: Sequence[ImageItem], processor: Any) -> torch.Tensor:
    """`items` as the float32 `pixel_values` [B, C, H, W] the processor makes of them."""
    if processor is None:
        raise ConfigError("this model has no image processor: images are preprocessed with the "
                          "model's own processor (load it with saelab.models.load)")
    images = [open_image(item) for item in items]
    return processor(images=images, return_tensors="pt")["pixel_values"].float()


def displayed_images(pixels: torch.Tensor, processor: Any) -> np.ndarray:
    """`pixels` [B, C, H, W] with the processor's normalisation undone, as uint8 [B, H, W, C]."""
    mean = torch.tensor(getattr(processor, "image_mean", None) or [0.0, 0.0, 0.0])
    std = torch.tensor(getattr(processor, "image_std", None) or [1.0, 1.0, 1.0])
    scale = getattr(processor, "rescale_factor", 1 / 255) or 1 / 255
    x = pixels.float() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    x = (x / scale).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()
