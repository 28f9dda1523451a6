"""Inference entry points of the fused kernels in TensorRT's AOT-plugin calling convention:
``kernel(input pointers..., int scalars..., output pointers...)``, every other size a compile-time
constant (a TensorRT engine fixes the image size, so only the batch and the vocabulary size vary).

They call the same kernel bodies as the PyTorch path (Triton inlines ``@triton.jit`` callees). The mask
pooling plugin is pool-only: L2 normalisation and the (Q, C) x (C, K) product stay in the graph, where
TensorRT runs them with its own GEMMs.

Every pointer is compiled as 16-byte aligned (``tt.divisibility``, ``aot.PLUGIN_POINTER_ALIGNMENT``):
TensorRT hands plugins 256-byte aligned buffers, and the hint lets Triton vectorise the loads.
"""

import triton
import triton.language as tl

from .adapter_attention_triton import adapter_attention_fwd_kernel
from .mask_attention_triton import mask_attention_fwd_kernel
from .mask_pooling_triton import mask_pool_tile
from .tiles_triton import span


@triton.jit
def adapter_attention_plugin_kernel(
    Q, K, V, N, KN, O,
    H: tl.constexpr, D: tl.constexpr, QK_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # q, o (B, H, N, D) and k, v (1, H, KN, D): contiguous; one vocabulary for the batch
    adapter_attention_fwd_kernel(
        Q,
        K,
        V,
        Q,
        O,
        O,
        H * N * D,
        N * D,
        D,
        1,
        0,
        KN * D,
        D,
        1,
        0,
        KN * D,
        D,
        1,
        H * N * D,
        N * D,
        D,
        1,
        0,
        0,
        H,
        N,
        KN,
        D,
        QK_SCALE,
        HAS_VALID=False,
        DOT_PRECISION=DOT_PRECISION,
        STORE_LSE=False,
        BLOCK_D=BLOCK_D,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )


@triton.jit
def mask_attention_plugin_kernel(
    Q,
    KI,
    VI,
    KS,
    VS,
    M,
    B,
    O,
    H: tl.constexpr,
    NQ: tl.constexpr,
    GH: tl.constexpr,
    GW: tl.constexpr,
    D: tl.constexpr,
    HM: tl.constexpr,
    WM: tl.constexpr,
    THRESHOLD: tl.constexpr,
    QK_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
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
def mask_pool_plugin_kernel(
    M, F_, OUT,
    NQ: tl.constexpr, C: tl.constexpr, HF: tl.constexpr, WF: tl.constexpr, HM: tl.constexpr, WM: tl.constexpr,
    THRESHOLD: tl.constexpr, SIGMOID: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # mask logits (B, NQ, HM, WM), features (B, C, HF, WF), out (B, NQ, C) area-normalised: contiguous.
    # One program per (block of masks, wide block of channels, image): each mask tile is sampled once per
    # BLOCK_C channels (64-128: 6-12 times at C = 768), sums and areas accumulate in fp32.
    offs_q, q_ok = span(tl.program_id(0) * BLOCK_Q, NQ, BLOCK_Q)
    offs_c, c_ok = span(tl.program_id(1) * BLOCK_C, C, BLOCK_C)
    b = tl.program_id(2)
    acc, area = mask_pool_tile(
        M + b * NQ * HM * WM, HM * WM, WM, 1, F_ + b * C * HF * WF, HF * WF, WF, 1, offs_q, offs_c, q_ok, c_ok,
        HF * WF, WF, HM, WM, HM / HF, WM / WF, THRESHOLD, SIGMOID, DOT_PRECISION, BLOCK_Q, BLOCK_C, BLOCK_HW,
    )
    pooled = acc / (area + 1e-8)[:, None]  # FC-CLIP's epsilon, as the reference
    out = OUT + (b * NQ + offs_q[:, None]) * C + offs_c[None, :]
    tl.store(out, pooled.to(OUT.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])
