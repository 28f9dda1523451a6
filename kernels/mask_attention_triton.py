"""Fused masked attention of mask tokens in Triton: forward and backward as custom ops with autograd.

The PyTorch path is block-sparse (FlexAttention's block masks, FlashMask):
1. Inside/outside is decided once per forward, not per head or per layer: ``MaskLayout`` (built in
   ``mask_attention.py``) holds an int8 (B, Q, N) mask and, per (image, block of BLOCK_Q mask tokens), the
   list of BLOCK_N-token blocks that hold any inside token. Every head and every layer that attends under
   the same masks reads that layout; the kernels never resample mask logits.
2. ``mask_attention_sparse_fwd_kernel``: one program per (block of mask tokens, split, batch x head). The
   online softmax starts from each token's own key/value (split 0 only) and visits only the listed token
   blocks; blocks wholly outside every mask of the block are never loaded. The block list is split across
   ``splits`` programs (flash-decoding), so batch 1 with 100 masks fills a 132-SM GPU; each split writes
   its normalised partial output (q's dtype) and log-sum-exp (fp32), and ``mask_attention_combine_kernel``
   merges them.
3. ``mask_attention_sparse_bwd_kernel`` walks the same lists, writes dQ, dK_self, dV_self and adds each
   visited block's dK_img / dV_img into fp32 buffers atomically (Q/BLOCK_Q <= 4 programs contend).

``mask_attention_fwd_kernel`` is the TensorRT plugin's single-launch kernel (a plugin runs one kernel, so
it samples the mask logits in its loop, ``mask_grid_triton``); the PyTorch path does not use it.

Supported: fp32, fp16, bf16 (GPU); any head dim (padded to a power of two >= 16); any strides of q/k/v.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .adapter_attention_triton import LOG2E, online_softmax_step
from .custom_ops import fused_op
from .dispatch import interpreting
from .mask_layout import MaskLayout
from .mask_grid_triton import mask_logits_tile
from .tiles_triton import batch_head, load_rows, load_rows_t, row_block, span
from .tuning import block_d, dot_precision, launch, mask_tiles

@triton.jit
def mask_token_rows(Q, KS, VS, b, h, offs_q, offs_d, qd_ok,
                    sqb, sqh, sqq, sqd, ssb, ssh, ssq, ssd, stb, sth, stq, std):
    """A block of mask tokens' queries with their own keys and values (each token attends to itself)."""
    q = load_rows(Q + b * sqb + h * sqh, offs_q, offs_d, sqq, sqd, qd_ok)
    k_self = load_rows(KS + b * ssb + h * ssh, offs_q, offs_d, ssq, ssd, qd_ok)
    v_self = load_rows(VS + b * stb + h * sth, offs_q, offs_d, stq, std, qd_ok)
    return q, k_self, v_self


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
    DOT_PRECISION: tl.constexpr, STORE_LSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = batch_head(pid_bh, H)
    offs_q, offs_d, q_ok, d_ok, qd_ok = row_block(pid_q, NQ, D, BLOCK_Q, BLOCK_D)
    q, k_self, v_self = mask_token_rows(
        Q, KS, VS, b, h, offs_q, offs_d, qd_ok, sqb, sqh, sqq, sqd, ssb, ssh, ssq, ssd, stb, sth, stq, std
    )
    # the token's own score starts the online softmax (log2 units)
    m_i = tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * qk_scale
    l_i = tl.full((BLOCK_Q,), 1.0, tl.float32)
    acc = v_self.to(tl.float32)
    mask_base = M + b * smb
    for start in range(0, N, BLOCK_N):
        offs_n, n_ok = span(start, N, BLOCK_N)
        logits = mask_logits_tile(
            mask_base, smq, smy, smx, offs_q, offs_n, q_ok, n_ok, grid_w, in_h, in_w, scale_y, scale_x
        )
        inside = (logits > threshold) & n_ok[None, :]
        kt = load_rows_t(KI + b * skb + h * skh, offs_n, offs_d, skn, skd, n_ok, d_ok)
        v = load_rows(VI + b * svb + h * svh, offs_n, offs_d, svn, svd, n_ok[:, None] & d_ok[None, :])
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(inside, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v, DOT_PRECISION)
    out = acc / l_i[:, None]
    tl.store(
        O + b * sob + h * soh + offs_q[:, None] * soq + offs_d[None, :] * sod, out.to(O.dtype.element_ty), mask=qd_ok
    )
    if STORE_LSE:  # for the backward pass; inference (the TensorRT plugin) skips it
        tl.store(LSE + pid_bh * NQ + offs_q, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def mask_attention_sparse_fwd_kernel(
    Q, KI, VI, KS, VS, INSIDE, COUNTS, INDICES, O, LSE,
    sqb, sqh, sqq, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    ssb, ssh, ssq, ssd,
    stb, sth, stq, std,
    sob, soh, soq, sod,
    H, NQ, N, D, NB, n_splits, qk_scale,
    PARTIAL: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # INSIDE (B, NQ, N) int8, COUNTS (B, QB) int32, INDICES (B, QB, NB) int32: contiguous (MaskLayout).
    # PARTIAL: O (splits, B*H, NQ, D) in q's dtype and LSE (splits, B*H, NQ) fp32, contiguous, for the combine.
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b, h = batch_head(pid_bh, H)
    offs_q, offs_d, q_ok, d_ok, qd_ok = row_block(pid_q, NQ, D, BLOCK_Q, BLOCK_D)
    q, k_self, v_self = mask_token_rows(
        Q, KS, VS, b, h, offs_q, offs_d, qd_ok, sqb, sqh, sqq, sqd, ssb, ssh, ssq, ssd, stb, sth, stq, std
    )
    # split 0 starts the online softmax from the token's own score (log2 units); the others start empty
    own = pid_s == 0
    m_i = tl.where(own, tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * qk_scale, float("-inf"))
    l_i = tl.where(own, 1.0, 0.0) + tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.where(own, v_self.to(tl.float32), 0.0)
    tile = b * tl.num_programs(0) + pid_q
    count = tl.load(COUNTS + tile)
    per_split = tl.cdiv(count, n_splits)
    first = pid_s * per_split
    last = tl.minimum(first + per_split, count)
    for i in range(first, last):
        offs_n = tl.load(INDICES + tile * NB + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        inside = tl.load(
            INSIDE + (b * NQ + offs_q[:, None]) * N + offs_n[None, :], mask=q_ok[:, None] & n_ok[None, :], other=0
        )
        kt = load_rows_t(KI + b * skb + h * skh, offs_n, offs_d, skn, skd, n_ok, d_ok)
        v = load_rows(VI + b * svb + h * svh, offs_n, offs_d, svn, svd, n_ok[:, None] & d_ok[None, :])
        s = tl.where(inside != 0, tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale, float("-inf"))
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v, DOT_PRECISION)
    if PARTIAL:
        seen = l_i > 0
        l_safe = tl.where(seen, l_i, 1.0)
        part = (pid_s * tl.num_programs(2) + pid_bh) * NQ + offs_q
        tl.store(O + part[:, None] * D + offs_d[None, :], (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=qd_ok)
        tl.store(LSE + part, tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf")), mask=q_ok)
    else:
        out = acc / l_i[:, None]
        tl.store(
            O + b * sob + h * soh + offs_q[:, None] * soq + offs_d[None, :] * sod,
            out.to(O.dtype.element_ty),
            mask=qd_ok,
        )
        tl.store(LSE + pid_bh * NQ + offs_q, m_i + tl.math.log2(l_i), mask=q_ok)


@triton.jit
def mask_attention_combine_kernel(
    OP, LP, O, LSE,
    sob, soh, soq, sod,
    H, NQ, D, n_splits,
    BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # out = sum_s 2^(lse_s - lse) out_s with lse = log2 sum_s 2^lse_s; split 0 holds the token's own key,
    # so lse is finite and no row divides by zero.
    pid_bh = tl.program_id(1)
    BH = tl.num_programs(1)
    offs_q, offs_d, q_ok, d_ok, qd_ok = row_block(tl.program_id(0), NQ, D, BLOCK_Q, BLOCK_D)
    m = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    for s in range(0, n_splits):
        m = tl.maximum(m, tl.load(LP + (s * BH + pid_bh) * NQ + offs_q, mask=q_ok, other=0.0))
    l = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for s in range(0, n_splits):
        part = (s * BH + pid_bh) * NQ + offs_q
        w = tl.math.exp2(tl.load(LP + part, mask=q_ok, other=0.0) - m)
        l += w
        acc += w[:, None] * tl.load(OP + part[:, None] * D + offs_d[None, :], mask=qd_ok, other=0.0).to(tl.float32)
    b, h = batch_head(pid_bh, H)
    tl.store(
        O + b * sob + h * soh + offs_q[:, None] * soq + offs_d[None, :] * sod,
        (acc / l[:, None]).to(O.dtype.element_ty),
        mask=qd_ok,
    )
    tl.store(LSE + pid_bh * NQ + offs_q, m + tl.math.log2(l), mask=q_ok)


@triton.jit
def mask_attention_sparse_bwd_kernel(
    Q, KI, VI, KS, VS, INSIDE, COUNTS, INDICES, DO, LSE, DELTA, DQ, DKI, DVI, DKS, DVS,
    sqb, sqh, sqq, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    ssb, ssh, ssq, ssd,
    stb, sth, stq, std,
    H, NQ, N, D, NB, qk_scale, sm_scale,
    DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # DO, DQ, DKS, DVS are contiguous (B, H, Q, D); DKI, DVI are fp32 contiguous (B, H, N, D); the layout
    # (INSIDE, COUNTS, INDICES) is the forward's.
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = batch_head(pid_bh, H)
    offs_q, offs_d, q_ok, d_ok, qd_ok = row_block(pid_q, NQ, D, BLOCK_Q, BLOCK_D)
    q, k_self, v_self = mask_token_rows(
        Q, KS, VS, b, h, offs_q, offs_d, qd_ok, sqb, sqh, sqq, sqd, ssb, ssh, ssq, ssd, stb, sth, stq, std
    )
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
    tile = b * tl.num_programs(0) + pid_q
    for i in range(0, tl.load(COUNTS + tile)):
        offs_n = tl.load(INDICES + tile * NB + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        nd_ok = n_ok[:, None] & d_ok[None, :]
        inside = tl.load(
            INSIDE + (b * NQ + offs_q[:, None]) * N + offs_n[None, :], mask=q_ok[:, None] & n_ok[None, :], other=0
        )
        k = load_rows(KI + b * skb + h * skh, offs_n, offs_d, skn, skd, nd_ok)
        v = load_rows(VI + b * svb + h * svh, offs_n, offs_d, svn, svd, nd_ok)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(inside != 0, tl.math.exp2(s - lse[:, None]), 0.0)
        dv = tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        dk = tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PRECISION)
        img = pid_bh * N * D + offs_n[:, None] * D + offs_d[None, :]
        tl.atomic_add(DVI + img, dv, mask=nd_ok)
        tl.atomic_add(DKI + img, dk * sm_scale, mask=nd_ok)
    tl.store(DQ + row, (dq * sm_scale).to(DQ.dtype.element_ty), mask=qd_ok)


def layout_tiles(device: torch.device) -> Tuple[int, int]:
    """(BLOCK_Q, BLOCK_N) of the block-sparse layout the kernels of ``device`` read."""
    return mask_tiles(device)


def num_splits(programs: int, blocks: int, device: torch.device) -> int:
    """How many programs share one block list: enough for one program per SM, never more than there are
    blocks to visit. Not more: every split writes and the combine reads back a (B, H, Q, D) partial, which
    costs 1/16 of the k/v traffic per split at Q = 100, N = 1600 (kernels/traffic.py). The interpreter
    always splits in two, so CPU tests cover the combine."""
    if interpreting():
        return min(2, blocks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(blocks, triton.cdiv(sms, programs)))


def forward(q, k_img, v_img, k_self, v_self, layout: MaskLayout, splits: Optional[int] = None):
    """(out, lse) of the block-sparse kernel over ``layout``'s block lists."""
    B, H, NQ, D = q.shape
    N = k_img.shape[2]
    QB, NB = layout.block_indices.shape[1:]
    if splits is None:
        splits = num_splits(QB * B * H, NB, q.device)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    if splits > 1:
        part_out = torch.empty(splits, B * H, NQ, D, device=q.device, dtype=q.dtype)
        part_lse = torch.empty(splits, B * H, NQ, device=q.device, dtype=torch.float32)
    else:
        part_out, part_lse = out, lse
    args = (
        q, k_img, v_img, k_self, v_self, layout.inside, layout.block_counts, layout.block_indices, part_out, part_lse,
        *q.stride(), *k_img.stride(), *v_img.stride(), *k_self.stride(), *v_self.stride(), *out.stride(),
        H, NQ, N, D, NB, splits, D ** -0.5 * LOG2E,
    )
    meta = dict(PARTIAL=splits > 1, DOT_PRECISION=dot_precision(q.dtype), BLOCK_D=block_d(D))
    launch(
        "mask_attention_sparse_fwd", mask_attention_sparse_fwd_kernel, lambda m: (QB, splits, B * H),
        args, meta, q.device, bucket=(NQ, N, D),
    )
    if splits > 1:
        launch(
            "mask_attention_combine",
            mask_attention_combine_kernel,
            lambda m: (triton.cdiv(NQ, m["BLOCK_Q"]), B * H),
            (part_out, part_lse, out, lse, *out.stride(), H, NQ, D, splits),
            dict(BLOCK_D=block_d(D)),
            q.device,
            bucket=(NQ, D),
        )
    return out, lse


def backward(q, k_img, v_img, k_self, v_self, layout: MaskLayout, out, lse, grad_out):
    """(dq, dk_img, dv_img, dk_self, dv_self)."""
    B, H, NQ, D = q.shape
    N = k_img.shape[2]
    QB, NB = layout.block_indices.shape[1:]
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1)
    dq, dks, dvs = (torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
    dki = torch.zeros(k_img.shape, device=q.device, dtype=torch.float32)
    dvi = torch.zeros(v_img.shape, device=q.device, dtype=torch.float32)
    args = (
        q, k_img, v_img, k_self, v_self, layout.inside, layout.block_counts, layout.block_indices,
        grad_out, lse, delta, dq, dki, dvi, dks, dvs,
        *q.stride(), *k_img.stride(), *v_img.stride(), *k_self.stride(), *v_self.stride(),
        H, NQ, N, D, NB, D ** -0.5 * LOG2E, D ** -0.5,
    )
    meta = dict(DOT_PRECISION=dot_precision(q.dtype), BLOCK_D=block_d(D))
    launch(
        "mask_attention_sparse_bwd", mask_attention_sparse_bwd_kernel, lambda m: (QB, B * H),
        args, meta, q.device, bucket=(NQ, N, D), reset=("DKI", "DVI"),
    )
    return dq, dki.to(k_img.dtype), dvi.to(v_img.dtype), dks, dvs


# The operators take the layout as its three tensors and two tile sizes (a schema has no dataclasses).
@fused_op("mask_attention_fwd")
def forward_op(
    q: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    inside: torch.Tensor,
    block_counts: torch.Tensor,
    block_indices: torch.Tensor,
    block_q: int,
    block_n: int,
    splits: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    layout = MaskLayout(inside, block_counts, block_indices, block_q, block_n)
    return forward(q, k_img, v_img, k_self, v_self, layout, splits)


@fused_op("mask_attention_bwd")
def backward_op(
    q: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    inside: torch.Tensor,
    block_counts: torch.Tensor,
    block_indices: torch.Tensor,
    block_q: int,
    block_n: int,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    layout = MaskLayout(inside, block_counts, block_indices, block_q, block_n)
    return backward(q, k_img, v_img, k_self, v_self, layout, out, lse, grad_out)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], *output)
    ctx.tiles = inputs[8:10]


def _backward(ctx, grad_out, _grad_lse):
    *tensors, out, lse = ctx.saved_tensors
    return (*backward_op(*tensors, *ctx.tiles, out, lse, grad_out), None, None, None, None, None, None)


forward_op.register_autograd(_backward, setup_context=_setup_context)


def mask_attention_triton(q, k_img, v_img, k_self, v_self, layout: MaskLayout, splits: Optional[int] = None):
    """``layout`` must carry the block lists of this device's tiles (``mask_attention_layout``)."""
    if (layout.block_q, layout.block_n) != layout_tiles(q.device):
        raise ValueError(
            f"layout tiles {(layout.block_q, layout.block_n)} differ from the kernel's {layout_tiles(q.device)}"
        )
    return forward_op(
        q, k_img, v_img, k_self, v_self, layout.inside, layout.block_counts, layout.block_indices,
        layout.block_q, layout.block_n, splits,
    )[0]
