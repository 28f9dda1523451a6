"""Mask-average pooling → L2 normalisation → cosine logits (the `mask-average` classifier head,
FC-CLIP's out-of-vocabulary branch).

Contract (shared by the PyTorch reference below and the fused kernel that replaces it on CUDA):

    mask_logits  (B, Q, Hm, Wm)  mask generator's logits at any resolution
    dense        (B, C, Hf, Wf)  per-location CLIP embeddings
    text         (K, C)          class-text embeddings (normalised here, so any scale is accepted)
    logit_scale  float or 0-d tensor, already exponentiated
    weighting    "binary": mask = resized logit > threshold (FC-CLIP); "sigmoid": soft weights
    returns      (B, Q, K)       logit_scale * cos(pooled mask embedding, text)

Masks are resized to (Hf, Wf) bilinearly (align_corners=False). Pooling divides by the mask's area
(+1e-8, FC-CLIP's epsilon), so an empty mask pools to zero and scores 0 against every class. The
mask weights carry no gradient (FC-CLIP detaches them); dense, text and a tensor logit_scale do.
``mask_average_logits`` picks the fused kernels (``mask_pooling_triton.py``) or the reference, whichever
``dispatch.py`` selects.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .onnx_ops import custom_node
from .dispatch import exporting_fused_nodes, random_inputs, register_op, require_tensors, select, size_bucket, timed

WEIGHTINGS = ("binary", "sigmoid")


def _check(mask_logits, dense, text, weighting) -> None:
    require_tensors(mask_logits=mask_logits, dense=dense, text=text)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    if mask_logits.dim() != 4 or dense.dim() != 4 or mask_logits.shape[0] != dense.shape[0] or 0 in mask_logits.shape:
        raise ValueError(
            f"need mask_logits (B, Q >= 1, Hm, Wm) and dense (B, C, Hf, Wf); "
            f"got {tuple(mask_logits.shape)}, {tuple(dense.shape)}"
        )
    if text.dim() != 2 or text.shape[1] != dense.shape[1]:
        raise ValueError(f"text must be (K, C={dense.shape[1]}); got {tuple(text.shape)}")
    # under autocast the product runs in the autocast type whatever the inputs' (the model's fp32 text)
    if dense.dtype != text.dtype and not torch.is_autocast_enabled(dense.device.type):
        raise TypeError(f"dense and text must share one dtype outside autocast; got {dense.dtype}, {text.dtype}")


def mask_average_logits_reference(
    mask_logits: torch.Tensor,
    dense: torch.Tensor,
    text: torch.Tensor,
    logit_scale,
    weighting: str = "binary",
    threshold: float = 0.0,
) -> torch.Tensor:
    _check(mask_logits, dense, text, weighting)
    return cosine_logits_reference(mask_pool_reference(mask_logits, dense, weighting, threshold), text, logit_scale)


def mask_pool_reference(
    mask_logits: torch.Tensor, dense: torch.Tensor, weighting: str = "binary", threshold: float = 0.0
) -> torch.Tensor:
    """(B, Q, C) mask-average pooled embeddings: the pooling half of the op (TensorRT's MaskPool plugin)."""
    with torch.no_grad():
        resized = F.interpolate(mask_logits.detach(), size=dense.shape[-2:], mode="bilinear", align_corners=False)
        weights = (resized > threshold).to(dense.dtype) if weighting == "binary" else resized.sigmoid().to(dense.dtype)
        weights = weights / (weights.sum(dim=(-1, -2), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", dense, weights)


def cosine_logits_reference(pooled: torch.Tensor, text: torch.Tensor, logit_scale) -> torch.Tensor:
    """(B, Q, K) = logit_scale * cos(pooled rows, text rows): the half the fused graph keeps as ONNX ops."""
    return logit_scale * torch.matmul(F.normalize(pooled, dim=-1), F.normalize(text, dim=-1).t())


def _triton(mask_logits, dense, text, logit_scale, weighting="binary", threshold=0.0):
    from .mask_pooling_triton import mask_average_logits_triton

    _check(mask_logits, dense, text, weighting)
    return mask_average_logits_triton(mask_logits, dense, text, logit_scale, weighting, threshold)


CANDIDATES = {"triton": _triton, "eager": mask_average_logits_reference}


def _bucket(mask_logits: torch.Tensor, dense: torch.Tensor, text: torch.Tensor, weighting: str):
    """(B, Q, C, Hf, Wf, Hm, Wm, K, sigmoid): batch and vocabulary rounded up to powers of two."""
    B, Q = mask_logits.shape[:2]
    return (size_bucket(B), Q, dense.shape[1], *dense.shape[-2:], *mask_logits.shape[-2:],
            size_bucket(text.shape[0]), int(weighting == "sigmoid"))


def _candidates(bucket, dtype, device, grad, names):
    from .mask_attention import box_mask_logits

    B, Q, C, Hf, Wf, Hm, Wm, K, sigmoid = bucket
    masks = box_mask_logits(B, Q, (Hm, Wm), device, dtype)
    randn = random_inputs(device)
    dense, text = randn(B, C, Hf, Wf, dtype=dtype, grad=grad), randn(K, C, dtype=dtype, grad=grad)
    weighting = "sigmoid" if sigmoid else "binary"
    return {n: timed(functools.partial(CANDIDATES[n], masks, dense, text, 50.0, weighting), (dense, text), grad)
            for n in names}


class MaskPoolNode(torch.autograd.Function):
    """Mask pooling as one ``fisa_rt::MaskPool`` ONNX node (the fused export; kernels/onnx_ops.py)."""

    @staticmethod
    def forward(ctx, mask_logits, dense, sigmoid, threshold):
        return mask_pool_reference(mask_logits, dense, "sigmoid" if sigmoid else "binary", threshold)

    @staticmethod
    def symbolic(g, mask_logits, dense, sigmoid, threshold):
        # (B, Q, C) in dense's type: the tracer cannot infer a custom node's shape, and warns where none is set
        (batch, queries), channels = mask_logits.type().varyingSizes()[:2], dense.type().varyingSizes()[1]
        pooled = custom_node(g, "MaskPool", mask_logits, dense, sigmoid_i=int(sigmoid), threshold_f=threshold)
        return pooled.setType(dense.type().with_sizes([batch, queries, channels]))

register_op("mask_average_logits", CANDIDATES, _candidates)


def mask_average_logits(
    mask_logits: torch.Tensor,
    dense: torch.Tensor,
    text: torch.Tensor,
    logit_scale,
    weighting: str = "binary",
    threshold: float = 0.0,
    kernels: str = "auto",
) -> torch.Tensor:
    """The op as the model calls it: the implementation the kernel mode ``kernels`` selects."""
    if exporting_fused_nodes():
        # Pooling is the plugin; normalisation and the (Q, C) x (C, K) product stay standard ops, which
        # TensorRT runs with its own GEMMs. The scale is a learned constant at export time.
        pooled = MaskPoolNode.apply(mask_logits, dense, weighting == "sigmoid", float(threshold))
        return cosine_logits_reference(pooled, text, float(logit_scale))
    _check(mask_logits, dense, text, weighting)  # before the shape bucket reads the shapes
    bucket = _bucket(mask_logits, dense, text, weighting)
    chosen = select("mask_average_logits", kernels, (mask_logits, dense, text), bucket)
    return CANDIDATES[chosen](mask_logits, dense, text, logit_scale, weighting, threshold)
