"""Image sources: the packaged scikit-image and scikit-learn images, folders of image files,
Hugging Face image datasets.

    >>> items = read_images("digits", limit=100)     # scikit-learn's 8 x 8 digits, labelled
    >>> items[0].title, items[0].label                 # ('digits#0', '0')
    >>> open_image(items[0])                           # a PIL RGB image

An `ImageItem` names an image and says how to get it; the pixels are decoded only when
`open_image` is called (a folder of many photos is never held in memory at once). Files of a
folder are checked when the folder is read (`PIL.Image.verify`), so that a corrupt file is
refused, by name, before any model runs.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from saelab.data._sources import hf_spec
from saelab.errors import DataError, MissingDependencyError

SKIMAGE = "skimage"
"""scikit-image's offline test images (astronaut, camera, coffee, ...): 27 images, each labelled
with its own name."""
LFW = "lfw"
"""scikit-image's LFW subset: 200 grey 25 x 25 crops, labelled "face" (100) or "non-face"."""
DIGITS = "digits"
"""scikit-learn's 1,797 handwritten digits (8 x 8, grey), labelled "0" to "9"."""
SKLEARN_SAMPLES = "sklearn-samples"
"""scikit-learn's two sample photographs (china, flower)."""
IMAGE_SOURCES = (SKIMAGE, LFW, DIGITS, SKLEARN_SAMPLES)
"""Names of the packaged image sets (each needs scikit-image or scikit-learn)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
"""File suffixes a folder source reads (case-insensitive)."""
_SKIMAGE_INSTALL = "pip install scikit-image"
_SKIMAGE_NAMES = ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard",
                  "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
                  "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
                  "page", "retina", "rocket", "shepp_logan_phantom", "text")
"""scikit-image loaders whose files ship with the package (the others need a download)."""


class ImageItem(NamedTuple):
    """One image of a source: its name and label, and where its pixels come from."""

    title: str
    """A short name: the file's path below the folder, the loader's name, or `SOURCE#i`."""
    label: str | None
    """A class or concept label when the source has one (the subfolder, the digit, ...)."""
    path: Path | None = None
    """The image file (folder sources), decoded by `open_image`."""
    array: Any = None
    """The pixels (a uint8 numpy array [H, W] or [H, W, C], or a PIL image) when the source
    holds them in memory."""


def read_images(source: str, limit: int | None = None) -> list[ImageItem]:
    """The images of `source`, at most `limit` of them, in a fixed order.

    `source` is one of:
    - ``"skimage"``, ``"lfw"``, ``"digits"``, ``"sklearn-samples"``: the packaged images (see
      `IMAGE_SOURCES`);
    - a folder: every image file below it (sorted by path; suffixes in `IMAGE_SUFFIXES`),
      labelled with the name of its subfolder when it lies in one;
    - ``"hf:NAME[:SPLIT]"`` or ``"hf:NAME:CONFIG:SPLIT"``: a Hugging Face dataset with an image
      column (needs `datasets`), streamed, so only `limit` rows are fetched;
    - several of these joined by ``+`` (``"skimage+digits"``): their images one after the other.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1 image, got {limit}")
    if "+" in source and not Path(source).expanduser().exists():
        items: list[ImageItem] = []
        for part in source.split("+"):
            left = None if limit is None else limit - len(items)
            if left == 0:
                break
            items += read_images(part, left)
        return items
    packaged: dict[str, Callable[[], Iterator[ImageItem]]] = {
        SKIMAGE: _skimage_images, LFW: _lfw_images, DIGITS: _digits,
        SKLEARN_SAMPLES: _sklearn_samples}
    if source in packaged:
        return list(itertools.islice(packaged[source](), limit))
    if source.startswith("hf:"):
        return _read_hf(source[3:], limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, limit)
    what = "is not a folder" if path.exists() else "is neither a known image set nor a folder"
    raise DataError(f"image source {source!r} {what}. Use one of {', '.join(IMAGE_SOURCES)}, a "
                    f"folder of image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...), or "
                    f"hf:NAME[:SPLIT] for a Hugging Face image dataset")


def open_image(item: ImageItem):
    """The image as a PIL RGB image (a corrupt file is a DataError naming it)."""
    from PIL import Image

    if item.path is not None:
        try:
            with Image.open(item.path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{item.path} is not a readable image ({e}); remove or replace "
                            f"the file, or point --dataset at a folder without it") from None
    if isinstance(item.array, Image.Image):
        return item.array.convert("RGB")
    return Image.fromarray(_as_uint8(np.asarray(item.array))).convert("RGB")


def _as_uint8(a: np.ndarray) -> np.ndarray:
    """Pixels as uint8: booleans to 0/255, floats in [0, 1] scaled by 255; RGBA kept."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    a = a.astype(np.float64)
    if a.max() <= 1.0:
        a = a * 255.0
    return np.clip(a, 0, 255).round().astype(np.uint8)


def _skimage():
    if importlib.util.find_spec("skimage") is None:
        raise MissingDependencyError(f"the packaged scikit-image images need scikit-image: run "
                                     f"`{_SKIMAGE_INSTALL}`")
    import skimage.data

    return skimage.data


def _skimage_images() -> Iterator[ImageItem]:
    data = _skimage()
    for name in _SKIMAGE_NAMES:
        yield ImageItem(title=name, label=name, array=getattr(data, name)())
    left, right, _ = data.stereo_motorcycle()
    yield ImageItem(title="stereo_motorcycle_left", label="stereo_motorcycle", array=left)
    yield ImageItem(title="stereo_motorcycle_right", label="stereo_motorcycle", array=right)


def _lfw_images() -> Iterator[ImageItem]:
    faces = _skimage().lfw_subset()  # [200, 25, 25]: the first 100 are faces
    for i, a in enumerate(faces):
        yield ImageItem(title=f"lfw#{i}", label="face" if i < 100 else "non-face", array=a)


def _digits() -> Iterator[ImageItem]:
    from sklearn.datasets import load_digits

    digits = load_digits()  # images [1797, 8, 8] with values 0..16
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for i, (a, target) in enumerate(zip(pixels, digits.target)):
        yield ImageItem(title=f"digits#{i}", label=str(int(target)), array=a)


def _sklearn_samples() -> Iterator[ImageItem]:
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    for filename, a in zip(samples.filenames, samples.images):
        name = Path(filename).stem
        yield ImageItem(title=name, label=name, array=a)


def _read_folder(root: Path, limit: int | None) -> list[ImageItem]:
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"folder {root} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                        f"put images in it, or choose another --dataset")
    items = []
    for path in files[:limit]:
        _verify(path)
        relative = path.relative_to(root)
        label = relative.parts[-2] if len(relative.parts) > 1 else None
        items.append(ImageItem(title=relative.as_posix(), label=label, path=path))
    return items


def _verify(path: Path) -> None:
    """Refuse a file PIL cannot identify or whose structure is broken (no full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:  # noqa: BLE001  (PIL raises many kinds for a broken file)
        raise DataError(f"{path} is not a readable image ({type(e).__name__}: {e}); remove or "
                        f"replace the file, or point --dataset at a folder without it") from None


def _read_hf(spec: str, limit: int | None) -> list[ImageItem]:
    name, config, split = hf_spec(spec)
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("reading Hugging Face datasets (hf:NAME) needs the package "
                                     "datasets: run `pip install datasets`") from None
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
        features = getattr(rows, "features", None) or {}
        column = _image_column(features, name, datasets)
        label_names = getattr(features.get("label"), "names", None)
        return [_hf_item(row, column, label_names, name, i)
                for i, row in enumerate(itertools.islice(rows, limit))]
    except (OSError, ValueError, ConnectionError) as e:
        raise DataError(f"cannot read Hugging Face dataset {name!r} (split {split!r}): {e}") \
            from None


def _image_column(features: dict, name: str, datasets: Any) -> str:
    """The first column of type datasets.Image."""
    found = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    if not found:
        raise DataError(f"dataset {name!r} has no image column (columns: {list(features)}); "
                        f"saelab captures images from a column of type datasets.Image")
    return found[0]


def _hf_item(row: dict, column: str, label_names: list[str] | None, name: str,
             index: int) -> ImageItem:
    label = row.get("label")
    if isinstance(label, int) and label_names:
        label = label_names[label]  # a ClassLabel: keep its name, not its index
    return ImageItem(title=f"{name}#{index}", label=None if label is None else str(label),
                     array=row[column])
