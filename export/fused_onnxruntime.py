"""The fused ONNX executed on ONNX Runtime (CPU), each ``fisa_rt::`` node running its TensorRT plugin kernel.

The closest this project gets to running the fused engine without a GPU: onnxruntime-extensions' Python
custom ops stand in for TensorRT's plugin layer. Each node's inputs, in the graph's order, with its
attributes, go through the same ``*_launch`` function that the plugin's ``aot_impl`` calls, and the
resulting kernel runs with exactly the parameters TensorRT passes (inputs, extra_args, outputs; constants
and grid from the launch) through ``plugin_launches.launch_jit`` - in Triton's interpreter when
``TRITON_INTERPRET=1`` was set before the kernels were imported (what tests/conftest.py does on CPU).

onnxruntime-extensions registers Python ops in its own domain (``ai.onnx.contrib``), so the session runs a
copy of the graph whose ``fisa_rt`` nodes are moved there; nothing else changes.

    session = fused_session("build/fisa-tiny-synthetic.fused.onnx")
    mask_logits, class_scores = session.run(None, {"image": images, "text": text})
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from fisa_rt.errors import MissingDependencyError
from fisa_rt.kernels import plugin_launches
from fisa_rt.kernels.onnx_ops import DOMAIN
from fisa_rt.onnxruntime_session import inference_session

ARCH = 90  # whose tuned block sizes the launches take (the interpreter ignores warps and stages)
HINT = "running the fused ONNX on ONNX Runtime needs onnxruntime-extensions (pip install onnxruntime-extensions)"


def _run(launch: plugin_launches.PluginLaunch, inputs, out_shape) -> np.ndarray:
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs]
    out = torch.full(out_shape, float("nan"), dtype=torch.float32)  # poisoned: every element must be written
    plugin_launches.launch_jit(launch, tensors, [out])
    return out.numpy()


def _adapter_attention(q, k, v, **attributes):
    return _run(plugin_launches.adapter_attention_launch(q.shape, k.shape, "fp32", ARCH), (q, k, v), q.shape)


def _mask_attention(q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold, **attributes):
    shapes = (q.shape, k_img.shape, mask_logits.shape)
    launch = plugin_launches.mask_attention_launch(*shapes, (grid_h, grid_w), threshold, "fp32", ARCH)
    return _run(launch, (q, k_img, v_img, k_self, v_self, mask_logits), q.shape)


def _mask_pool(mask_logits, dense, sigmoid, threshold, **attributes):
    launch = plugin_launches.mask_pool_launch(mask_logits.shape, dense.shape, bool(sigmoid), threshold, "fp32", ARCH)
    return _run(launch, (mask_logits, dense), mask_logits.shape[:2] + dense.shape[1:2])


# node -> (kernel call, number of tensor inputs, attributes and their kinds: "i" int, "f" float)
OPS: Dict[str, tuple] = {
    "AdapterAttention": (_adapter_attention, 3, {}),
    "MaskAttention": (_mask_attention, 6, {"grid_h": "i", "grid_w": "i", "threshold": "f"}),
    "MaskPool": (_mask_pool, 2, {"sigmoid": "i", "threshold": "f"}),
}
_registered: Dict[str, Callable] = {}


def _register_ops():
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        raise MissingDependencyError(HINT) from None
    kinds = {"i": PyCustomOpDef.dt_int64, "f": PyCustomOpDef.dt_float}
    for name, (fn, inputs, attributes) in OPS.items():
        if name in _registered:
            continue
        attrs = {k: kinds[v] for k, v in attributes.items()}
        attrs.update(plugin_namespace=PyCustomOpDef.dt_string, plugin_version=PyCustomOpDef.dt_string)
        _registered[name] = onnx_op(op_type=name, inputs=[PyCustomOpDef.dt_float] * inputs,
                                    outputs=[PyCustomOpDef.dt_float], attrs=attrs)(fn)


def fused_session(path: str):
    """An ONNX Runtime session (CPU) over the fused ONNX at ``path`` with the plugin kernels as its custom ops."""
    import onnx
    import onnxruntime as ort

    _register_ops()
    from onnxruntime_extensions import get_library_path

    model = onnx.load(path)
    contrib = "ai.onnx.contrib"
    for node in model.graph.node:
        if node.domain == DOMAIN:
            if node.op_type not in OPS:
                raise ValueError(f"{path} has a {DOMAIN}::{node.op_type} node, which no plugin implements")
            node.domain = contrib
    for opset in model.opset_import:
        if opset.domain == DOMAIN:
            opset.domain = contrib
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return inference_session(model.SerializeToString(), options)
