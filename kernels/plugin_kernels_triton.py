"""Inference entry points of the fused kernels in TensorRT's AOT-plugin calling convention:
``kernel(input pointers..., int scalars..., output pointers...)``, every other size a compile-time
constant (a TensorRT engine fixes the image size, so only the batch and the vocabulary size vary).

They call the same kernel bodies as the PyTorch path (Triton inlines ``@triton.jit`` callees), except the
mask-average plugin, which fuses pooling and cosine logits into one launch because a plugin launches one
kernel: each program recomputes its masks' pooled channels per class block (a few blocks at K <= 2000)
and skips the area division, which cosine similarity cancels.
"""

import triton
import triton.language as tl

from .adapter_attention_triton import adapter_attention_fwd_kernel
from .mask_attention_triton import mask_attention_fwd_kernel
from .mask_pooling_triton import mask_pool_tile


@triton.jit
def adapter_attention_plugin_kernel(
    Q, K, V, N, KN, O,
    H: tl.constexpr, D: tl.constexpr, QK_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # q, o (B, H, N, D) and k, v (1, H, KN, D): contiguous; one vocabulary for the batch
    adapter_attention_fwd_kernel(
        Q, K, V, Q, O, O,
        H * N * D, N * D, D, 1,
        0, KN * D, D, 1,
        0, KN * D, D, 1,
        H * N * D, N * D, D, 1,
        0, 0,
        H, N, KN, D, QK_SCALE,
        HAS_VALID=False, DOT_PRECISION=DOT_PRECISION, STORE_LSE=False, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )


@triton.jit
def mask_attention_plugin_kernel(
    Q, KI, VI, KS, VS, M, B, O,
    H: tl.constexpr, NQ: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr, D: tl.constexpr, HM: tl.constexpr, WM: tl.constexpr,
    THRESHOLD: tl.constexpr, QK_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # q, k_self, v_self, o (B, H, NQ, D); k_img, v_img (B, H, GH*GW, D); mask logits (B, NQ, HM, WM): contiguous
    N: tl.constexpr = GH * GW
    mask_attention_fwd_kernel(
        Q, KI, VI, KS, VS, M, O, O,
        H * NQ * D, NQ * D, D, 1,
        H * N * D, N * D, D, 1,
        H * N * D, N * D, D, 1,
        H * NQ * D, NQ * D, D, 1,
        H * NQ * D, NQ * D, D, 1,
        NQ * HM * WM, HM * WM, WM, 1,
        H * NQ * D, NQ * D, D, 1,
        H, NQ, N, D, GW, HM, WM, HM / GH, WM / GW, THRESHOLD, QK_SCALE,
        DOT_PRECISION=DOT_PRECISION, STORE_LSE=False, BLOCK_D=BLOCK_D, BLOCK_Q=BLOCK_Q, BLOCK_N=BLOCK_N,
    )


@triton.jit
def mask_average_logits_plugin_kernel(
    M, F_, T, KN, OUT,
    NQ: tl.constexpr, C: tl.constexpr, HF: tl.constexpr, WF: tl.constexpr, HM: tl.constexpr, WM: tl.constexpr,
    THRESHOLD: tl.constexpr, SIGMOID: tl.constexpr, SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # mask logits (B, NQ, HM, WM), features (B, C, HF, WF), text (KN, C), out (B, NQ, KN): contiguous
    pid_q = tl.program_id(0)
    pid_k = tl.program_id(1)
    b = tl.program_id(2)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    q_ok = offs_q < NQ
    k_ok = offs_k < KN
    dots = tl.zeros((BLOCK_Q, BLOCK_K), tl.float32)
    p_sq = tl.zeros((BLOCK_Q,), tl.float32)
    t_sq = tl.zeros((BLOCK_K,), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        pooled, _ = mask_pool_tile(
            M + b * NQ * HM * WM, HM * WM, WM, 1, F_ + b * C * HF * WF, HF * WF, WF, 1, offs_q, offs_c, q_ok, c_ok,
            HF * WF, WF, HM, WM, HM / HF, WM / WF, THRESHOLD, SIGMOID, DOT_PRECISION, BLOCK_Q, BLOCK_C, BLOCK_HW,
        )
        t = tl.load(T + offs_k[None, :] * C + offs_c[:, None], mask=k_ok[None, :] & c_ok[:, None], other=0.0).to(tl.float32)
        dots += tl.dot(pooled, t, input_precision="ieee")
        p_sq += tl.sum(pooled * pooled, 1)
        t_sq += tl.sum(t * t, 0)
    out = SCALE * dots / tl.maximum(tl.sqrt(p_sq), 1e-12)[:, None] / tl.maximum(tl.sqrt(t_sq), 1e-12)[None, :]
    tl.store(OUT + (b * NQ + offs_q[:, None]) * KN + offs_k[None, :], out.to(OUT.dtype.element_ty), mask=q_ok[:, None] & k_ok[None, :])
