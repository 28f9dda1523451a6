"""The fused ops as single custom ONNX nodes (domain ``fisa_rt``), for TensorRT plugins.

Switched on by ``fused_nodes()`` while exporting the *fused* ONNX flavour (an export-time context, as timm's
export switch, not a kernel mode): PyTorch runs the reference (so tracing sees real values), and the
TorchScript ONNX exporter writes one node per op through each Function's ``symbolic``. Node name, inputs and attributes are the contract with the
TensorRT plugins (``export/plugins.py``): ``plugin_namespace``/``plugin_version`` are the attributes
TensorRT's ONNX parser uses to find a registered plugin for a node it does not know.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .adapter_attention import adapter_attention_reference
from .mask_attention import mask_attention_reference
from .dispatch import _Export
from .mask_pooling import cosine_logits_reference, mask_pool_reference

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


def _node(g, name: str, *inputs, **attributes):
    return g.op(f"{DOMAIN}::{name}", *inputs, plugin_namespace_s=DOMAIN, plugin_version_s=VERSION, **attributes)


class AdapterAttentionNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return adapter_attention_reference(q, k, v)

    @staticmethod
    def symbolic(g, q, k, v):
        return _node(g, "AdapterAttention", q, k, v).setType(q.type())


class MaskAttentionNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold):
        return mask_attention_reference(q, k_img, v_img, k_self, v_self, mask_logits, (grid_h, grid_w), threshold)

    @staticmethod
    def symbolic(g, q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold):
        out = _node(
            g,
            "MaskAttention",
            q,
            k_img,
            v_img,
            k_self,
            v_self,
            mask_logits,
            grid_h_i=grid_h,
            grid_w_i=grid_w,
            threshold_f=threshold,
        )
        return out.setType(q.type())


class MaskPoolNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mask_logits, dense, sigmoid, threshold):
        return mask_pool_reference(mask_logits, dense, "sigmoid" if sigmoid else "binary", threshold)

    @staticmethod
    def symbolic(g, mask_logits, dense, sigmoid, threshold):
        return _node(g, "MaskPool", mask_logits, dense, sigmoid_i=int(sigmoid), threshold_f=threshold)


def adapter_attention_node(q, k, v, key_valid=None):
    if key_valid is not None:
        raise ValueError("the AdapterAttention node takes unpadded text: export with one vocabulary tensor (K, D)")
    return AdapterAttentionNode.apply(q, k, v)


def mask_attention_node(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold):
    return MaskAttentionNode.apply(
        q, k_img, v_img, k_self, v_self, mask_logits, int(grid[0]), int(grid[1]), float(threshold)
    )


def mask_average_logits_node(mask_logits, dense, text, logit_scale, weighting, threshold):
    # Pooling is the plugin; normalisation and the (Q, C) x (C, K) product stay standard ops, which
    # TensorRT runs with its own GEMMs. The scale is a learned constant at export time.
    pooled = MaskPoolNode.apply(mask_logits, dense, weighting == "sigmoid", float(threshold))
    return cosine_logits_reference(pooled, text, float(logit_scale))
