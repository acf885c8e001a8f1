"""Image-text pairs available offline: labelled images with a sentence naming their label.

No image-caption dataset ships in a package here, so the pairs are made from labelled images
(saelab.data.images): scikit-learn's digits ("a photo of the digit seven") and the scikit-image
pictures, whose loader names become short descriptions ("a photo of a cat" for `chelsea`). Each
pair carries its concept (the label), so that a measure can ask whether an image and a text of
the same concept activate the same features, and a shuffled pair set can be made for a
matched-against-shuffled comparison.

    >>> pairs = paired_images("digits", limit=200)
    >>> pairs[7].text, pairs[7].concept
    ('a photo of the digit seven', '7')
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from saelab.data.images import DIGITS, SKIMAGE, ImageItem, read_images
from saelab.errors import DataError

TEMPLATES = ("a photo of {}", "a picture of {}", "an image showing {}", "{}")
"""Sentence templates a label is put into (the first is the default); {} is the label's noun
phrase ("the digit seven", "a cat")."""
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SKIMAGE_PHRASES = {
    "astronaut": "an astronaut", "binary_blobs": "random black and white blobs",
    "brick": "a brick wall", "camera": "a man with a camera", "cat": "a cat",
    "cell": "a cell under a microscope", "checkerboard": "a checkerboard",
    "chelsea": "a cat", "clock": "a clock", "coffee": "a cup of coffee", "coins": "coins",
    "colorwheel": "a colour wheel", "grass": "grass", "gravel": "gravel", "horse": "a horse",
    "hubble_deep_field": "galaxies in deep space", "immunohistochemistry": "stained tissue",
    "logo": "a logo", "microaneurysms": "a retina scan", "moon": "the surface of the moon",
    "page": "a page of printed text", "retina": "a retina", "rocket": "a rocket",
    "shepp_logan_phantom": "a medical phantom image", "text": "printed text",
    "stereo_motorcycle": "a motorcycle",
}
"""Noun phrases for the scikit-image loaders' labels."""
PAIRED_SOURCES = (DIGITS, SKIMAGE)
"""Image sources whose labels have a sentence."""


class ImageTextPair(NamedTuple):
    """One image, a sentence about it and the concept both stand for."""

    image: ImageItem
    """The image (saelab.data.images.ImageItem)."""
    text: str
    """A sentence naming the image's concept ("a photo of the digit seven")."""
    concept: str
    """The concept: the image's label ("7", "chelsea")."""


def label_phrase(source: str, label: str) -> str:
    """The noun phrase for `label` of image source `source` ("the digit seven", "a cat")."""
    if source == DIGITS:
        return f"the digit {DIGIT_WORDS[int(label)]}"
    if source == SKIMAGE:
        return SKIMAGE_PHRASES.get(label, label.replace("_", " "))
    raise DataError(f"no sentences for the labels of {source!r}: paired images come from "
                    f"{', '.join(PAIRED_SOURCES)}")


def label_sentence(source: str, label: str, template: str = TEMPLATES[0]) -> str:
    """The sentence for `label` of image source `source` in `template` ("a photo of {}")."""
    return template.format(label_phrase(source, label))


def paired_images(source: str = DIGITS, limit: int | None = None,
                  templates: Sequence[str] = TEMPLATES[:1], seed: int = 0) -> list[ImageTextPair]:
    """Image-text pairs from a labelled image source (`digits`, `skimage`, or both joined by
    "+"), at most `limit` images of each part. With several `templates`, each image's sentence
    uses one drawn at random (seeded)."""
    if not templates or any("{}" not in t for t in templates):
        raise DataError(f"templates must be sentences with {{}} for the label, got {templates!r}")
    rng = random.Random(seed)
    pairs: list[ImageTextPair] = []
    for part in source.split("+"):
        if part not in PAIRED_SOURCES:
            raise DataError(f"no sentences for the labels of {part!r}: paired images come from "
                            f"{', '.join(PAIRED_SOURCES)} (joined by '+')")
        for item in read_images(part, limit=limit):
            template = templates[rng.randrange(len(templates))] if len(templates) > 1 \
                else templates[0]
            pairs.append(ImageTextPair(item, label_sentence(part, item.label, template),
                                       item.label))
    return pairs


def shuffled(pairs: Sequence[ImageTextPair], seed: int = 0) -> list[ImageTextPair]:
    """The pairs with their texts given to other pairs' images at random, each text to an image
    of another concept (a derangement by concept): the mismatched pairs a pair score must rank
    below the matched ones. Needs at least two concepts."""
    if len({p.concept for p in pairs}) < 2:
        raise DataError("shuffled pairs need images of at least two concepts")
    rng = random.Random(seed)
    out = []
    for p in pairs:
        other = p
        while other.concept == p.concept:
            other = pairs[rng.randrange(len(pairs))]
        out.append(ImageTextPair(p.image, other.text, other.concept))
    return out
