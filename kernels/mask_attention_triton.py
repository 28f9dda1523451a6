"""Fused masked attention of mask tokens in Triton: forward, backward and the autograd wrapper.

One program per (block of mask tokens, batch x head). The online softmax starts from each token's own
key/value (the token always sees itself, so no row is ever empty) and then walks the image tokens in
blocks. Whether an image token lies inside a mask is decided in the loop by sampling the mask logits
bilinearly at the token's cell (``mask_grid_triton``), so neither the Q x N bias nor resized masks are
written to device memory. The backward pass recomputes the same decisions, writes dQ, dK_self, dV_self
and adds each block's dK_img / dV_img into fp32 buffers atomically (Q is 100-250: a few programs per
image token block contend).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .adapter_attention_triton import LOG2E
from .mask_grid_triton import mask_logits_tile
from .tuning import block_d, dot_precision, launch


@triton.jit
def mask_attention_fwd_kernel(
    Q, KI, VI, KS, VS, M, O, LSE,
    sqb, sqh, sqq, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    ssb, ssh, ssq, ssd,
    stb, sth, stq, std,
    smb, smq, smy, smx,
    sob, soh, soq, sod,
    H, NQ, N, D, grid_w, in_h, in_w, scale_y, scale_x, threshold, qk_scale,
    DOT_PRECISION: tl.constexpr, STORE_LSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_q < NQ
    d_ok = offs_d < D
    qd_ok = q_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_q[:, None] * sqq + offs_d[None, :] * sqd, mask=qd_ok, other=0.0)
    k_self = tl.load(KS + b * ssb + h * ssh + offs_q[:, None] * ssq + offs_d[None, :] * ssd, mask=qd_ok, other=0.0)
    v_self = tl.load(VS + b * stb + h * sth + offs_q[:, None] * stq + offs_d[None, :] * std, mask=qd_ok, other=0.0)
    # the token's own score starts the online softmax (log2 units)
    m_i = tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * qk_scale
    l_i = tl.full((BLOCK_Q,), 1.0, tl.float32)
    acc = v_self.to(tl.float32)
    mask_base = M + b * smb
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        logits = mask_logits_tile(mask_base, smq, smy, smx, offs_q, offs_n, q_ok, n_ok, grid_w, in_h, in_w, scale_y, scale_x)
        inside = (logits > threshold) & n_ok[None, :]
        kt = tl.load(KI + b * skb + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(VI + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(inside, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_q[:, None] * soq + offs_d[None, :] * sod, out.to(O.dtype.element_ty), mask=qd_ok)
    if STORE_LSE:  # for the backward pass; inference (the TensorRT plugin) skips it
        tl.store(LSE + pid_bh * NQ + offs_q, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def mask_attention_bwd_kernel(
    Q, KI, VI, KS, VS, M, DO, LSE, DELTA, DQ, DKI, DVI, DKS, DVS,
    sqb, sqh, sqq, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    ssb, ssh, ssq, ssd,
    stb, sth, stq, std,
    smb, smq, smy, smx,
    H, NQ, N, D, grid_w, in_h, in_w, scale_y, scale_x, threshold, qk_scale, sm_scale,
    DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # DO, DQ, DKS, DVS are contiguous (B, H, Q, D); DKI, DVI are fp32 contiguous (B, H, N, D).
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_q < NQ
    d_ok = offs_d < D
    qd_ok = q_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_q[:, None] * sqq + offs_d[None, :] * sqd, mask=qd_ok, other=0.0)
    k_self = tl.load(KS + b * ssb + h * ssh + offs_q[:, None] * ssq + offs_d[None, :] * ssd, mask=qd_ok, other=0.0)
    v_self = tl.load(VS + b * stb + h * sth + offs_q[:, None] * stq + offs_d[None, :] * std, mask=qd_ok, other=0.0)
    row = pid_bh * NQ * D + offs_q[:, None] * D + offs_d[None, :]
    do = tl.load(DO + row, mask=qd_ok, other=0.0)
    lse = tl.load(LSE + pid_bh * NQ + offs_q, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh * NQ + offs_q, mask=q_ok, other=0.0)
    do32 = do.to(tl.float32)
    # the token's own key and value
    p_self = tl.where(q_ok, tl.math.exp2(tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * qk_scale - lse), 0.0)
    ds_self = p_self * (tl.sum(do32 * v_self.to(tl.float32), 1) - delta)
    dq = ds_self[:, None] * k_self.to(tl.float32)
    tl.store(DKS + row, (ds_self[:, None] * q.to(tl.float32) * sm_scale).to(DKS.dtype.element_ty), mask=qd_ok)
    tl.store(DVS + row, (p_self[:, None] * do32).to(DVS.dtype.element_ty), mask=qd_ok)
    mask_base = M + b * smb
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        nd_ok = n_ok[:, None] & d_ok[None, :]
        logits = mask_logits_tile(mask_base, smq, smy, smx, offs_q, offs_n, q_ok, n_ok, grid_w, in_h, in_w, scale_y, scale_x)
        inside = (logits > threshold) & n_ok[None, :] & q_ok[:, None]
        k = tl.load(KI + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=nd_ok, other=0.0)
        v = tl.load(VI + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=nd_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(inside, tl.math.exp2(s - lse[:, None]), 0.0)
        dv = tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        dk = tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PRECISION)
        img = pid_bh * N * D + offs_n[:, None] * D + offs_d[None, :]
        tl.atomic_add(DVI + img, dv, mask=nd_ok)
        tl.atomic_add(DKI + img, dk * sm_scale, mask=nd_ok)
    tl.store(DQ + row, (dq * sm_scale).to(DQ.dtype.element_ty), mask=qd_ok)


def _grid_args(mask_logits: torch.Tensor, grid):
    Hm, Wm = mask_logits.shape[-2:]
    # PyTorch's bilinear scale for an explicit output size: in / out, in fp32
    return (grid[1], Hm, Wm, Hm / grid[0], Wm / grid[1])


def forward(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold):
    B, H, NQ, D = q.shape
    N = k_img.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    args = (
        q, k_img, v_img, k_self, v_self, mask_logits, out, lse,
        *q.stride(), *k_img.stride(), *v_img.stride(), *k_self.stride(), *v_self.stride(), *mask_logits.stride(), *out.stride(),
        H, NQ, N, D, *_grid_args(mask_logits, grid), float(threshold), D ** -0.5 * LOG2E,
    )
    meta = dict(DOT_PRECISION=dot_precision(q.dtype), STORE_LSE=True, BLOCK_D=block_d(D))
    launch(
        "mask_attention_fwd", mask_attention_fwd_kernel, lambda m: (triton.cdiv(NQ, m["BLOCK_Q"]), B * H),
        args, meta, q.device, key=("NQ", "N", "D"),
    )
    return out, lse


def backward(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold, out, lse, grad_out):
    B, H, NQ, D = q.shape
    N = k_img.shape[2]
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1)
    dq, dks, dvs = (torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
    dki = torch.zeros(k_img.shape, device=q.device, dtype=torch.float32)
    dvi = torch.zeros(v_img.shape, device=q.device, dtype=torch.float32)
    args = (
        q, k_img, v_img, k_self, v_self, mask_logits, grad_out, lse, delta, dq, dki, dvi, dks, dvs,
        *q.stride(), *k_img.stride(), *v_img.stride(), *k_self.stride(), *v_self.stride(), *mask_logits.stride(),
        H, NQ, N, D, *_grid_args(mask_logits, grid), float(threshold), D ** -0.5 * LOG2E, D ** -0.5,
    )
    meta = dict(DOT_PRECISION=dot_precision(q.dtype), BLOCK_D=block_d(D))
    launch(
        "mask_attention_bwd", mask_attention_bwd_kernel, lambda m: (triton.cdiv(NQ, m["BLOCK_Q"]), B * H),
        args, meta, q.device, key=("NQ", "N", "D"), reset=("DKI", "DVI"),
    )
    return dq, dki.to(k_img.dtype), dvi.to(v_img.dtype), dks, dvs


class MaskAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold):
        mask_logits = mask_logits.detach()
        out, lse = forward(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold)
        ctx.save_for_backward(q, k_img, v_img, k_self, v_self, mask_logits, out, lse)
        ctx.grid, ctx.threshold = grid, threshold
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_img, v_img, k_self, v_self, mask_logits, out, lse = ctx.saved_tensors
        grads = backward(q, k_img, v_img, k_self, v_self, mask_logits, ctx.grid, ctx.threshold, out, lse, grad_out)
        return (*grads, None, None, None)


def mask_attention_triton(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold=0.0):
    return MaskAttention.apply(q, k_img, v_img, k_self, v_self, mask_logits, tuple(grid), float(threshold))
