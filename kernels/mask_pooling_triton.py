"""Fused mask-average pooling -> cosine logits in Triton: forward and backward as custom ops with autograd.

Forward, three kernels, each input read once:
1. ``mask_weights_kernel`` samples every mask at the feature cells once (bilinear, as F.interpolate with
   align_corners=False) and writes the (B, Q, Hf*Wf) weights (binary or sigmoid) in the features' dtype:
   the one intermediate, ~Q*HW*2 bytes (0.8 MB at Q = 250 on a 40x40 grid), read back from L2.
2. ``mask_pool_fwd_kernel``: a GEMM per image, (Q, HW) weights @ (HW, C) features on tensor cores, one
   program per (block of masks, block of channels); the mask areas are summed in fp32 beside it and the
   (B, Q, C) fp32 pooled embeddings are divided by them in the epilogue. Features are addressed through
   one flattened cell stride (NCHW and channels-last both have one), so the loads vectorise.
3. ``cosine_logits_kernel``: (B*Q, C) x (K, C) with both L2 norms accumulated in fp32 beside the product;
   the product runs on tensor cores in the inputs' 16-bit dtype (fp32 inputs keep exact fp32 products).

Backward: the logits/normalisation part is (B, Q, C)- and (K, C)-sized, done in PyTorch; the feature
gradient (the size of the feature map) is ``mask_pool_bwd_kernel``, which reads the forward's weights.

``mask_pool_tile`` (weights sampled in the loop) serves the TensorRT plugin, which runs one kernel.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .custom_ops import fused_op
from .mask_grid_triton import mask_logits_tile
from .tiles_triton import mask_weights_at, span
from .tuning import dot_precision, launch

NORM_EPS = 1e-12  # F.normalize's


@triton.jit
def _weights(logits, threshold, SIGMOID: tl.constexpr):
    if SIGMOID:
        return tl.sigmoid(logits)
    return (logits > threshold).to(tl.float32)


@triton.jit
def mask_pool_tile(
    mask_base, smq, smy, smx, feat_base, sfc, sfy, sfx,
    offs_q, offs_c, q_ok, c_ok, HW, grid_w, in_h, in_w, scale_y, scale_x, threshold,
    SIGMOID: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """(mask weights @ features, mask areas) of one block of masks and channels of one image, over all
    HW cells: the weights are sampled from the logits in registers, never stored."""
    acc = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    area = tl.zeros((BLOCK_Q,), tl.float32)
    for start in range(0, HW, BLOCK_HW):
        offs_hw, hw_ok = span(start, HW, BLOCK_HW)
        logits = mask_logits_tile(
            mask_base, smq, smy, smx, offs_q, offs_hw, q_ok, hw_ok, grid_w, in_h, in_w, scale_y, scale_x
        )
        w = tl.where(q_ok[:, None] & hw_ok[None, :], _weights(logits, threshold, SIGMOID), 0.0)
        fy = offs_hw // grid_w
        fx = offs_hw % grid_w
        f = tl.load(
            feat_base + offs_c[None, :] * sfc + (fy * sfy + fx * sfx)[:, None],
            mask=hw_ok[:, None] & c_ok[None, :],
            other=0.0,
        )
        acc += tl.dot(w.to(f.dtype), f, input_precision=DOT_PRECISION)
        area += tl.sum(w, 1)
    return acc, area


@triton.jit
def mask_weights_kernel(
    M, W,
    smb, smq, smy, smx,
    NQ, HW, grid_w, in_h, in_w, scale_y, scale_x, threshold,
    SIGMOID: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # W (B, NQ, HW) contiguous, in the features' dtype
    offs_q, q_ok = span(tl.program_id(0) * BLOCK_Q, NQ, BLOCK_Q)
    offs_hw, hw_ok = span(tl.program_id(1) * BLOCK_HW, HW, BLOCK_HW)
    b = tl.program_id(2)
    logits = mask_logits_tile(
        M + b * smb, smq, smy, smx, offs_q, offs_hw, q_ok, hw_ok, grid_w, in_h, in_w, scale_y, scale_x
    )
    w = _weights(logits, threshold, SIGMOID)
    tiles = mask_weights_at(W, b, offs_q, offs_hw, NQ, HW)
    tl.store(tiles, w.to(W.dtype.element_ty), mask=q_ok[:, None] & hw_ok[None, :])


@triton.jit
def mask_pool_fwd_kernel(
    W, F_, P, DENOM,
    sfb, sfc, sf_hw,
    NQ, C, HW,
    DOT_PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # W (B, NQ, HW) contiguous; features F_[b, c, cell] at b*sfb + c*sfc + cell*sf_hw; P (B, NQ, C) fp32
    # pooled, already divided by the area; DENOM (B, NQ) fp32, area + FC-CLIP's epsilon, what the backward
    # divides by. P and DENOM contiguous. The loop's area has one use on purpose: Triton 3.6-3.8 abort
    # (OptimizeThreadLocality, `loopResult.hasOneUse()`) on an fp32 tile reduced in the loop whose sum is
    # both divided by and stored.
    pid_c = tl.program_id(1)
    offs_q, q_ok = span(tl.program_id(0) * BLOCK_Q, NQ, BLOCK_Q)
    offs_c, c_ok = span(pid_c * BLOCK_C, C, BLOCK_C)
    b = tl.program_id(2)
    acc = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    area = tl.zeros((BLOCK_Q,), tl.float32)
    for start in range(0, HW, BLOCK_HW):
        offs_hw, hw_ok = span(start, HW, BLOCK_HW)
        w = tl.load(mask_weights_at(W, b, offs_q, offs_hw, NQ, HW), mask=q_ok[:, None] & hw_ok[None, :], other=0.0)
        f = tl.load(
            F_ + b * sfb + offs_c[None, :] * sfc + offs_hw[:, None] * sf_hw,
            mask=hw_ok[:, None] & c_ok[None, :],
            other=0.0,
        )
        acc += tl.dot(w, f, input_precision=DOT_PRECISION)
        area += tl.sum(w.to(tl.float32), 1)
    denom = area + 1e-8
    pooled = acc / denom[:, None]
    tl.store(P + (b * NQ + offs_q[:, None]) * C + offs_c[None, :], pooled, mask=q_ok[:, None] & c_ok[None, :])
    if pid_c == 0:
        tl.store(DENOM + b * NQ + offs_q, denom, mask=q_ok)


@triton.jit
def cosine_logits_kernel(
    P, T, OUT, st_k, st_c, ML, KN, C, scale,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # P (ML, C) fp32 contiguous; OUT (ML, KN) contiguous; scale * cos(P rows, T rows).
    offs_m, m_ok = span(tl.program_id(0) * BLOCK_M, ML, BLOCK_M)
    offs_k, k_ok = span(tl.program_id(1) * BLOCK_K, KN, BLOCK_K)
    dots = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
    p_sq = tl.zeros((BLOCK_M,), tl.float32)
    t_sq = tl.zeros((BLOCK_K,), tl.float32)
    for start in range(0, C, BLOCK_C):
        offs_c, c_ok = span(start, C, BLOCK_C)
        p = tl.load(P + offs_m[:, None] * C + offs_c[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0)
        t = tl.load(T + offs_k[None, :] * st_k + offs_c[:, None] * st_c, mask=k_ok[None, :] & c_ok[:, None], other=0.0)
        # the product in the text's dtype (tensor cores for 16-bit), both norms in fp32
        dots += tl.dot(p.to(t.dtype), t, input_precision=DOT_PRECISION)
        p_sq += tl.sum(p * p, 1)
        t32 = t.to(tl.float32)
        t_sq += tl.sum(t32 * t32, 0)
    p_norm = tl.maximum(tl.sqrt(p_sq), 1e-12)
    t_norm = tl.maximum(tl.sqrt(t_sq), 1e-12)
    out = scale * dots / p_norm[:, None] / t_norm[None, :]
    tl.store(
        OUT + offs_m[:, None] * KN + offs_k[None, :], out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :]
    )


@triton.jit
def mask_pool_bwd_kernel(
    W, G, DENOM, DF,
    sdb, sdc, sd_hw,
    NQ, C, HW,
    DOT_PRECISION: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # G (B, Q, C) fp32 gradient of the pooled embeddings; DF[b, c, hw] = sum_q G[b,q,c] W[b,q,hw] / denom[b,q]
    offs_c, c_ok = span(tl.program_id(0) * BLOCK_C, C, BLOCK_C)
    offs_hw, hw_ok = span(tl.program_id(1) * BLOCK_HW, HW, BLOCK_HW)
    b = tl.program_id(2)
    acc = tl.zeros((BLOCK_C, BLOCK_HW), tl.float32)
    for start in range(0, NQ, BLOCK_Q):
        offs_q, q_ok = span(start, NQ, BLOCK_Q)
        denom = tl.load(DENOM + b * NQ + offs_q, mask=q_ok, other=1.0)
        w = tl.load(mask_weights_at(W, b, offs_q, offs_hw, NQ, HW), mask=q_ok[:, None] & hw_ok[None, :], other=0.0)
        w = w.to(tl.float32) / denom[:, None]
        gt = tl.load(
            G + (b * NQ + offs_q[None, :]) * C + offs_c[:, None], mask=q_ok[None, :] & c_ok[:, None], other=0.0
        )
        acc += tl.dot(gt, w, input_precision=DOT_PRECISION)
    tl.store(
        DF + b * sdb + offs_c[:, None] * sdc + offs_hw[None, :] * sd_hw,
        acc.to(DF.dtype.element_ty),
        mask=c_ok[:, None] & hw_ok[None, :],
    )


def _cell_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B, C, Hf, Wf) with one stride over its Hf*Wf cells (NCHW and channels-last have one)."""
    return t if t.stride(2) == t.shape[3] * t.stride(3) else t.contiguous()


def _sampling(mask_logits: torch.Tensor, dense: torch.Tensor):
    Hm, Wm = mask_logits.shape[-2:]
    Hf, Wf = dense.shape[-2:]
    return (Hf * Wf, Wf, Hm, Wm, Hm / Hf, Wm / Wf)


def mask_weights(mask_logits, dense, weighting, threshold) -> torch.Tensor:
    """(B, Q, Hf*Wf) weights in the features' dtype: every mask sampled once at the feature cells."""
    B, Q = mask_logits.shape[:2]
    HW = dense.shape[-2] * dense.shape[-1]
    weights = torch.empty(B, Q, HW, device=dense.device, dtype=dense.dtype)
    args = (mask_logits, weights, *mask_logits.stride(), Q, *_sampling(mask_logits, dense), float(threshold))
    launch("mask_weights", mask_weights_kernel,
           lambda m: (triton.cdiv(Q, m["BLOCK_Q"]), triton.cdiv(HW, m["BLOCK_HW"]), B),
           args, dict(SIGMOID=weighting == "sigmoid"), dense.device, bucket=(Q, HW))
    return weights


def pool(weights, dense):
    """(B, Q, C) fp32 area-normalised pooled embeddings and (B, Q) fp32 denominators (area + epsilon)."""
    B, Q, HW = weights.shape
    C = dense.shape[1]
    pooled = torch.empty(B, Q, C, device=dense.device, dtype=torch.float32)
    denom = torch.empty(B, Q, device=dense.device, dtype=torch.float32)
    args = (weights, dense, pooled, denom, dense.stride(0), dense.stride(1), dense.stride(3), Q, C, HW)
    launch("mask_pool_fwd", mask_pool_fwd_kernel,
           lambda m: (triton.cdiv(Q, m["BLOCK_Q"]), triton.cdiv(C, m["BLOCK_C"]), B),
           args, dict(DOT_PRECISION=dot_precision(dense.dtype)), dense.device, bucket=(Q, C, HW))
    return pooled, denom


def cosine_logits(pooled: torch.Tensor, text: torch.Tensor, scale: float, out_dtype: torch.dtype) -> torch.Tensor:
    B, Q, C = pooled.shape
    K = text.shape[0]
    out = torch.empty(B, Q, K, device=pooled.device, dtype=out_dtype)
    args = (pooled, text, out, text.stride(0), text.stride(1), B * Q, K, C, float(scale))
    meta = dict(DOT_PRECISION=dot_precision(text.dtype))
    launch("cosine_logits", cosine_logits_kernel,
           lambda m: (triton.cdiv(B * Q, m["BLOCK_M"]), triton.cdiv(K, m["BLOCK_K"])),
           args, meta, pooled.device, bucket=(B * Q, K, C))
    return out


@fused_op("mask_pool_bwd")
def pool_backward(
    weights: torch.Tensor, dense: torch.Tensor, grad_pooled: torch.Tensor, denom: torch.Tensor
) -> torch.Tensor:
    """(B, C, Hf, Wf) gradient of the features (``dense`` gives only the shape and layout)."""
    B, Q, HW = weights.shape
    C = dense.shape[1]
    grad_dense = _cell_stride(torch.empty_like(dense))
    strides = (grad_dense.stride(0), grad_dense.stride(1), grad_dense.stride(3))
    args = (weights, grad_pooled.contiguous(), denom, grad_dense, *strides, Q, C, HW)
    launch("mask_pool_bwd", mask_pool_bwd_kernel,
           lambda m: (triton.cdiv(C, m["BLOCK_C"]), triton.cdiv(HW, m["BLOCK_HW"]), B),
           args, dict(DOT_PRECISION=dot_precision(torch.float32)), dense.device, bucket=(Q, C, HW))
    return grad_dense


def _normalize_backward(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """Gradient of F.normalize(x, dim=-1) (eps 1e-12) at x, given the output's gradient."""
    norm = x.norm(dim=-1, keepdim=True)
    y = x / norm.clamp_min(NORM_EPS)
    projected = grad_y - y * (y * grad_y).sum(-1, keepdim=True)
    return torch.where(norm > NORM_EPS, projected / norm.clamp_min(NORM_EPS), grad_y / NORM_EPS)


@fused_op("mask_cosine_fwd")
def cosine_forward(
    mask_logits: torch.Tensor, dense: torch.Tensor, text: torch.Tensor, weighting: str, threshold: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos, weights, pooled, denom): (B, Q, K) cosines in the features' dtype, and what the backward reads.
    The logit scale stays outside the op, so a learned scale is an ordinary product whose gradient autograd
    takes (and a tensor scale needs no host read)."""
    dense = _cell_stride(dense)
    weights = mask_weights(mask_logits, dense, weighting, threshold)
    pooled, denom = pool(weights, dense)
    return cosine_logits(pooled, text, 1.0, dense.dtype), weights, pooled, denom


def _setup_context(ctx, inputs, output):
    _, dense, text, _, _ = inputs
    _, weights, pooled, denom = output
    ctx.save_for_backward(weights, dense, text, pooled, denom)


def _backward(ctx, grad_cos, *_unused):
    weights, dense, text, pooled, denom = ctx.saved_tensors
    g = grad_cos.float()
    grad_dense = grad_text = None
    if ctx.needs_input_grad[1]:
        grad_pooled = _normalize_backward(pooled, g @ F.normalize(text.float(), dim=-1))
        grad_dense = pool_backward(weights, dense, grad_pooled, denom)
    if ctx.needs_input_grad[2]:
        pn = F.normalize(pooled, dim=-1)
        grad_text = _normalize_backward(text.float(), torch.einsum("bqk,bqc->kc", g, pn)).to(text.dtype)
    return None, grad_dense, grad_text, None, None


cosine_forward.register_autograd(_backward, setup_context=_setup_context)


def mask_average_logits_triton(mask_logits, dense, text, logit_scale, weighting="binary", threshold=0.0):
    return logit_scale * cosine_forward(mask_logits.detach(), dense, text, weighting, float(threshold))[0]
