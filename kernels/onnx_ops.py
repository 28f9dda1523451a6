"""The fused ops as single custom ONNX nodes (domain ``fisa_rt``), for TensorRT plugins.

Selected with ``FisaConfig.kernels = "onnx"`` while exporting the *fused* ONNX flavour: PyTorch runs the
reference (so tracing sees real values), and the TorchScript ONNX exporter writes one node per op
through the ``symbolic`` of each op's ``*Node`` Function (in the op's module, beside its reference, so that
this module imports no op). Node name, inputs and attributes are the contract with the
TensorRT plugins (``export/plugins.py``): ``plugin_namespace``/``plugin_version`` are the attributes
TensorRT's ONNX parser uses to find a registered plugin for a node it does not know.
"""

from __future__ import annotations

DOMAIN = "fisa_rt"
VERSION = "1"
NODES = ("AdapterAttention", "MaskAttention", "MaskPool")


def custom_node(g, name: str, *inputs, **attributes):
    """The ``fisa_rt::<name>`` node a Function's ``symbolic`` writes, with the attributes TensorRT's parser
    uses to find the plugin registered for it."""
    return g.op(f"{DOMAIN}::{name}", *inputs, plugin_namespace_s=DOMAIN, plugin_version_s=VERSION, **attributes)
