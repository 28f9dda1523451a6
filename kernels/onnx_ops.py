"""The fused ops as single custom ONNX nodes (domain ``fisa_rt``), for TensorRT plugins.

Switched on by ``fused_nodes()`` while exporting the *fused* ONNX flavour (an export-time context, as timm's
export switch, not a kernel mode): PyTorch runs the reference (so tracing sees real values), and the
TorchScript ONNX exporter writes one node per op through the ``symbolic`` of each op's ``*Node`` Function (in
the op's module, beside its reference, so that this module imports no op). Node name, inputs and attributes are
the contract with the TensorRT plugins (``export/plugins.py``): ``plugin_namespace``/``plugin_version`` are the
attributes TensorRT's ONNX parser uses to find a registered plugin for a node it does not know.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .dispatch import _Export

DOMAIN = "fisa_rt"
VERSION = "1"
NODES = ("AdapterAttention", "MaskAttention", "MaskPool")


@contextlib.contextmanager
def fused_nodes() -> Iterator[None]:
    """Inside: every fused op, whatever the model's kernel mode, is one custom node for the ONNX exporter."""
    before = _Export.fused_nodes
    _Export.fused_nodes = True
    try:
        yield
    finally:
        _Export.fused_nodes = before


def custom_node(g, name: str, *inputs, **attributes):
    """The ``fisa_rt::<name>`` node a Function's ``symbolic`` writes, with the attributes TensorRT's parser
    uses to find the plugin registered for it."""
    return g.op(f"{DOMAIN}::{name}", *inputs, plugin_namespace_s=DOMAIN, plugin_version_s=VERSION, **attributes)
