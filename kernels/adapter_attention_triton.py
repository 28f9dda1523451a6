"""Fused adapter attention (SEVE) in Triton: forward and backward as custom ops with autograd.

Forward: one program per (block of visual tokens, batch x head); it walks the classes in blocks with an
online softmax (FlashAttention), so the N x K score matrix never reaches device memory. Padded classes
get -inf; a row with no valid class ends with an empty softmax and is written as zeros.

Backward, deterministic (FlashAttention-2's split): ``adapter_attention_bwd_kernel`` recomputes the
probabilities from the saved log-sum-exp in the forward's programs and writes dQ;
``adapter_attention_bwd_kv_kernel`` runs one program per (block of classes, vocabulary x head), walks every
visual token of every image that shares the vocabulary and writes dK and dV once, in a fixed order. The
former design added dK/dV with fp32 atomics from every program (~5 M atomics at N = 1600, run-to-run
different sums); the K-parallel pass has fewer programs (K/BLOCK_K x H: 36 at K = 133) but its work is
a third of the backward's and it needs no zeroed buffers.

Why the gate and the residual add are not folded into the epilogue: SEVE's output projection sits
between the attention and the gate, so the epilogue would have to own a width x width GEMM; cuBLAS does
that GEMM better, and the gated add is one elementwise op that PyTorch fuses under torch.compile.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .custom_ops import fused_op
from .tiles_triton import batch_head, load_rows, load_rows_t, row_block, span
from .tuning import block_d, dot_precision, launch

LOG2E = 1.4426950408889634


@triton.jit
def online_softmax_step(m_i, l_i, acc, s, v, DOT_PRECISION: tl.constexpr):
    """One block of FlashAttention's online softmax: scores ``s`` (rows x block, log2 units, -inf where
    masked) and values ``v`` (block x D) folded into the running max ``m_i``, sum ``l_i`` and output ``acc``.
    Rows with nothing seen yet keep m = -inf; they are shifted by 0 so exp2 gives 0, not NaN."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def adapter_attention_fwd_kernel(
    Q, K, V, VALID, O, LSE,
    sqb, sqh, sqn, sqd,
    skb, skh, skk, skd,
    svb, svh, svk, svd,
    sob, soh, son, sod,
    s_valid_b, s_valid_k,
    H, N, KN, D, qk_scale,
    HAS_VALID: tl.constexpr, DOT_PRECISION: tl.constexpr, STORE_LSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b, h = batch_head(pid_bh, H)
    offs_n, offs_d, n_ok, d_ok, nd_ok = row_block(tl.program_id(0), N, D, BLOCK_N, BLOCK_D)
    q = load_rows(Q + b * sqb + h * sqh, offs_n, offs_d, sqn, sqd, nd_ok)
    m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    for start in range(0, KN, BLOCK_K):
        offs_k, k_ok = span(start, KN, BLOCK_K)
        kt = load_rows_t(k_base, offs_k, offs_d, skk, skd, k_ok, d_ok)
        v = load_rows(v_base, offs_k, offs_d, svk, svd, k_ok[:, None] & d_ok[None, :])
        if HAS_VALID:
            k_ok = k_ok & (tl.load(VALID + b * s_valid_b + offs_k * s_valid_k, mask=k_ok, other=0) != 0)
        # scores in log2 units: exp2 is the native instruction
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v, DOT_PRECISION)
    has_any = l_i > 0
    out = acc / tl.where(has_any, l_i, 1.0)[:, None]
    tl.store(
        O + b * sob + h * soh + offs_n[:, None] * son + offs_d[None, :] * sod,
        out.to(O.dtype.element_ty),
        mask=nd_ok,
    )
    # log2-sum-exp2; +inf for empty rows makes every recomputed probability 0 in the backward pass
    lse = tl.where(has_any, m_i + tl.math.log2(tl.where(has_any, l_i, 1.0)), float("inf"))
    if STORE_LSE:  # for the backward pass; inference (the TensorRT plugin) skips it
        tl.store(LSE + pid_bh * N + offs_n, lse, mask=n_ok)


@triton.jit
def adapter_attention_bwd_kernel(
    Q, K, V, VALID, DO, LSE, DELTA, DQ,
    sqb, sqh, sqn, sqd,
    skb, skh, skk, skd,
    svb, svh, svk, svd,
    s_valid_b, s_valid_k,
    H, N, KN, D, qk_scale, sm_scale,
    HAS_VALID: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dQ = sm_scale * sum_k P * (dO v_k - delta) k_k. DO and DQ are contiguous (B, H, N, D).
    pid_bh = tl.program_id(1)
    b, h = batch_head(pid_bh, H)
    offs_n, offs_d, n_ok, d_ok, nd_ok = row_block(tl.program_id(0), N, D, BLOCK_N, BLOCK_D)
    q = load_rows(Q + b * sqb + h * sqh, offs_n, offs_d, sqn, sqd, nd_ok)
    row = pid_bh * N * D + offs_n[:, None] * D + offs_d[None, :]
    do = tl.load(DO + row, mask=nd_ok, other=0.0)
    lse = tl.load(LSE + pid_bh * N + offs_n, mask=n_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * N + offs_n, mask=n_ok, other=0.0)
    dq = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    for start in range(0, KN, BLOCK_K):
        offs_k, k_ok = span(start, KN, BLOCK_K)
        kd_ok = k_ok[:, None] & d_ok[None, :]
        k = load_rows(k_base, offs_k, offs_d, skk, skd, kd_ok)
        v = load_rows(v_base, offs_k, offs_d, svk, svd, kd_ok)
        if HAS_VALID:
            k_ok = k_ok & (tl.load(VALID + b * s_valid_b + offs_k * s_valid_k, mask=k_ok, other=0) != 0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(k_ok[None, :] & n_ok[:, None], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    tl.store(DQ + row, (dq * sm_scale).to(DQ.dtype.element_ty), mask=nd_ok)


@triton.jit
def adapter_attention_bwd_kv_kernel(
    Q, K, V, VALID, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqn, sqd,
    skb, skh, skk, skd,
    svb, svh, svk, svd,
    s_valid_b, s_valid_k,
    H, N, KN, D, images_per_kv, qk_scale, sm_scale,
    HAS_VALID: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dV = sum over images and tokens of P^T dO; dK = sm_scale * sum of dS^T q, dS = P * (dO v - delta).
    # DO (B, H, N, D), LSE and DELTA (B, H, N) contiguous; DK and DV contiguous (Bt, H, KN, D).
    pid_th = tl.program_id(1)
    bt, h = batch_head(pid_th, H)
    offs_k, offs_d, k_ok, d_ok, kd_ok = row_block(tl.program_id(0), KN, D, BLOCK_K, BLOCK_D)
    k = load_rows(K + bt * skb + h * skh, offs_k, offs_d, skk, skd, kd_ok)
    v = load_rows(V + bt * svb + h * svh, offs_k, offs_d, svk, svd, kd_ok)
    if HAS_VALID:
        k_ok = k_ok & (tl.load(VALID + bt * s_valid_b + offs_k * s_valid_k, mask=k_ok, other=0) != 0)
    dk = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    for b in range(bt * images_per_kv, (bt + 1) * images_per_kv):
        for start in range(0, N, BLOCK_N):
            offs_n, n_ok = span(start, N, BLOCK_N)
            nd_ok = n_ok[:, None] & d_ok[None, :]
            q = load_rows(Q + b * sqb + h * sqh, offs_n, offs_d, sqn, sqd, nd_ok)
            row = (b * H + h) * N
            do = tl.load(DO + (row + offs_n[:, None]) * D + offs_d[None, :], mask=nd_ok, other=0.0)
            lse = tl.load(LSE + row + offs_n, mask=n_ok, other=float("inf"))
            delta = tl.load(DELTA + row + offs_n, mask=n_ok, other=0.0)
            # transposed scores (classes x tokens): the products below need no transposes of q or dO
            st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
            pt = tl.where(k_ok[:, None] & n_ok[None, :], tl.math.exp2(st - lse[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION)
    kv = pid_th * KN * D + offs_k[:, None] * D + offs_d[None, :]
    tl.store(DK + kv, (dk * sm_scale).to(DK.dtype.element_ty), mask=kd_ok)
    tl.store(DV + kv, dv.to(DV.dtype.element_ty), mask=kd_ok)


def _valid_args(key_valid: Optional[torch.Tensor], q: torch.Tensor):
    if key_valid is None:
        return q, 0, 0, False  # any pointer: never read
    valid = key_valid.to(torch.int8)
    return valid, valid.stride(0) if valid.shape[0] > 1 else 0, valid.stride(1), True


def _kv_stride(t: torch.Tensor):
    return (t.stride(0) if t.shape[0] > 1 else 0, t.stride(1), t.stride(2), t.stride(3))


@fused_op("adapter_attention_fwd")
def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): the attention and its row log-sum-exp (fp32), which the backward reads."""
    B, H, N, D = q.shape
    KN = k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    valid, svb, svk, has_valid = _valid_args(key_valid, q)
    args = (
        q, k, v, valid, out, lse, *q.stride(), *_kv_stride(k), *_kv_stride(v), *out.stride(), svb, svk,
        H, N, KN, D, D ** -0.5 * LOG2E,
    )
    meta = dict(HAS_VALID=has_valid, DOT_PRECISION=dot_precision(q.dtype), STORE_LSE=True, BLOCK_D=block_d(D))
    launch(
        "adapter_attention_fwd", adapter_attention_fwd_kernel, lambda m: (triton.cdiv(N, m["BLOCK_N"]), B * H),
        args, meta, q.device, bucket=(N, KN, D),
    )
    return out, lse


@fused_op("adapter_attention_bwd")
def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    Bt, KN = k.shape[0], k.shape[2]
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=q.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=q.device, dtype=v.dtype)
    valid, svb, svk, has_valid = _valid_args(key_valid, q)
    strides = (*q.stride(), *_kv_stride(k), *_kv_stride(v), svb, svk)
    meta = dict(HAS_VALID=has_valid, DOT_PRECISION=dot_precision(q.dtype), BLOCK_D=block_d(D))
    launch(
        "adapter_attention_bwd", adapter_attention_bwd_kernel, lambda m: (triton.cdiv(N, m["BLOCK_N"]), B * H),
        (q, k, v, valid, grad_out, lse, delta, dq, *strides, H, N, KN, D, D ** -0.5 * LOG2E, D ** -0.5),
        meta, q.device, bucket=(N, KN, D),
    )
    launch(
        "adapter_attention_bwd_kv", adapter_attention_bwd_kv_kernel, lambda m: (triton.cdiv(KN, m["BLOCK_K"]), Bt * H),
        (q, k, v, valid, grad_out, lse, delta, dk, dv, *strides, H, N, KN, D, B // Bt, D ** -0.5 * LOG2E, D ** -0.5),
        meta, q.device, bucket=(N, KN, D),
    )
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, key_valid, out, lse = ctx.saved_tensors
    return (*backward(q, k, v, key_valid, out, lse, grad_out), None)


forward.register_autograd(_backward, setup_context=_setup_context)


def adapter_attention_triton(q, k, v, key_valid=None):
    return forward(q, k, v, key_valid)[0]
