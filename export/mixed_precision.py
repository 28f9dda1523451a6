"""fp32 ONNX -> fp16 ONNX for strongly typed TensorRT engines, through NVIDIA ModelOpt AutoCast.

TensorRT 11 has no FP16 builder flag: an engine's precision is its ONNX's types (docs/design.md,
"TensorRT 10.3 - 11.x"). AutoCast runs the fp32 graph on ONNX Runtime (CPU) on calibration inputs and
converts every node to fp16 except

* the op types below, kept fp32 by rule: LayerNorm/GroupNorm (as InstanceNormalization) and Softmax,
  whose fp16 reductions overflow or lose the small differences CLIP's activations carry, and ReduceL2,
  the norm of the cosine logits' L2 normalisation (a sum of 512-768 squares);
* nodes whose calibration inputs or outputs exceed ``DATA_MAX`` in magnitude (fp16 keeps 11 mantissa
  bits; above 512 its spacing is 0.5 or more);

and inserts the Casts between the two. The graph's inputs and outputs keep their types (uint8 image,
fp32 text, fp32 outputs), so every runtime feeds the fp16 ONNX exactly like the fp32 one.

ModelOpt stays out of the base install (``nvidia-modelopt[onnx]`` pins onnx and onnxruntime-gpu, which
clashes with onnxruntime): ``pip install -e '.[tensorrt]'`` installs it with only what AutoCast imports.
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, List

import numpy as np

from fisa_rt.atomic import atomic_path
from fisa_rt.errors import MissingDependencyError

from .autocast_reference import reduced_reference
from .modelopt_log import modelopt_messages

FP32_OP_TYPES = ("LayerNormalization", "InstanceNormalization", "Softmax", "ReduceL2")
DATA_MAX = 512.0
MODELOPT_HINT = (
    "NVIDIA ModelOpt is not installed: pip install -e '.[tensorrt]' in fisa-rt's checkout (ModelOpt "
    "AutoCast and Q/DQ, without its onnxruntime-gpu pin)"
)


def _modelopt_autocast():
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise MissingDependencyError(MODELOPT_HINT) from None
    return convert_to_mixed_precision


def convert_fp16(onnx_path: str, out_path: str, calibration: Dict[str, np.ndarray]) -> Dict[str, object]:
    """Writes the fp16 ONNX; returns the manifest's ``mixed_precision`` record (what stayed fp32, why, and
    ModelOpt's warnings, each once)."""
    import onnx

    convert = _modelopt_autocast()
    quiet = ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast")
    with tempfile.TemporaryDirectory() as tmp, modelopt_messages(quiet) as messages, \
            reduced_reference() as reference:
        inputs = os.path.join(tmp, "calibration.npz")
        np.savez(inputs, **calibration)
        model = convert(
            onnx_path, "fp16", op_types_to_exclude=list(FP32_OP_TYPES), data_max=DATA_MAX, keep_io_types=True,
            calibration_data=inputs, providers=["cpu"],
        )
    fp32_nodes = fp32_compute_nodes(model)
    with atomic_path(out_path) as tmp_path:
        onnx.save(model, tmp_path)
    total = sum(1 for n in model.graph.node if n.op_type != "Cast")
    return {
        "tool": "modelopt.onnx.autocast",
        "low_precision": "fp16",
        "fp32_op_types": list(FP32_OP_TYPES),
        "data_max": DATA_MAX,
        "calibration_images": int(len(calibration["image"])),
        "reference_run": reference["runner"],
        "fp32_nodes": fp32_nodes,
        "nodes": total,
        "modelopt_log": messages,
    }


def fp32_compute_nodes(model) -> List[str]:
    """Names of the non-Cast nodes that compute in fp32: an fp32 output that is not a shape computation
    (integer-typed nodes and Casts are neither precision)."""
    import onnx

    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    fp32 = onnx.TensorProto.FLOAT
    nodes = (n for n in model.graph.node if n.op_type != "Cast")
    return sorted(n.name for n in nodes if any(types.get(o) == fp32 for o in n.output))
