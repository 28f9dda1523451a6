"""Kernel micro-benchmarks (issue: fused Triton kernels): each fused kernel against (a) the eager PyTorch
reference and (b) the strongest stock alternative — scaled_dot_product_attention for the attentions
(with a materialised boolean mask for the masked one), torch.compile of the reference chain for the
pooling — at the paper's shapes (fisa-convnext-l at 1024 px with COCO 133 / ADE 150 / LVIS 1203
classes) and the edge shapes (fisa-vit-b16 at 640 px). Each result records achieved TFLOP/s or GB/s
and the fraction of the device's roofline in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fisa_rt.kernels import (
    adapter_attention,
    adapter_attention_reference,
    mask_attention,
    mask_attention_reference,
    mask_average_logits,
    mask_average_logits_reference,
    mask_inside_grid,
)

from conftest import DEVICE, timed

DTYPE = torch.float16
# Dense fp16 tensor-core TFLOP/s and HBM TB/s from NVIDIA's datasheets, by device-name substring.
PEAKS = {"H100": (989.0, 3.35), "H200": (989.0, 4.8), "A100": (312.0, 2.0), "Orin": (42.5, 0.2)}

# SEVE adapter attention: (name, B, H, N, K, Dh). ViT-B/16 at 640 px has 40x40 tokens, width 768, 12 heads;
# ConvNeXt-L at 1024 px after stage 1 has 64x64 tokens, width 384 (8 heads of 48: padded to 64 in-kernel).
ADAPTER_SHAPES = [
    ("vitb16-640-coco", 1, 12, 1600, 133, 64),
    ("vitb16-640-lvis", 1, 12, 1600, 1203, 64),
    ("convnextl-1024-coco", 1, 8, 16384, 133, 48),
    ("convnextl-1024-ade", 1, 8, 16384, 150, 48),
    ("convnextl-1024-lvis", 1, 8, 16384, 1203, 48),
]
# Masked attention of mask tokens: (name, B, H, Q, grid, Dh, mask size)
MASK_ATTENTION_SHAPES = [
    ("vitb16-640", 1, 12, 100, (40, 40), 64, (160, 160)),
    ("vitl14-1024-250q", 1, 16, 250, (73, 73), 64, (256, 256)),
]
# Pooling -> logits: (name, B, Q, C, feature grid, mask size, K)
POOLING_SHAPES = [
    ("convnextl-1024-coco", 1, 250, 768, (32, 32), (256, 256), 133),
    ("convnextl-1024-ade", 1, 250, 768, (32, 32), (256, 256), 150),
    ("convnextl-1024-lvis", 1, 250, 768, (32, 32), (256, 256), 1203),
    ("convnext-b16-grid64", 1, 100, 512, (64, 64), (256, 256), 2000),
]


def _peaks():
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else ""
    return next((v for k, v in PEAKS.items() if k in name), (None, None))


def _record(benchmark, flops: float = 0.0, bytes_moved: float = 0.0):
    seconds = benchmark.stats.stats.median
    tflops, tbps = _peaks()
    info = {"median_ms": seconds * 1e3}
    if flops:
        info["tflops"] = flops / seconds / 1e12
        if tflops:
            info["compute_roofline_fraction"] = info["tflops"] / tflops
    if bytes_moved:
        info["gbps"] = bytes_moved / seconds / 1e9
        if tbps:
            info["memory_roofline_fraction"] = info["gbps"] / (tbps * 1e3)
    benchmark.extra_info.update(info)


IMPLEMENTATIONS = ["triton", "eager", "stock"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", ADAPTER_SHAPES, ids=lambda s: s[0])
def test_adapter_attention_forward(benchmark, cuda_only, shape, impl):
    _, B, H, N, K, Dh = shape
    q = torch.randn(B, H, N, Dh, device=DEVICE, dtype=DTYPE)
    k, v = (torch.randn(1, H, K, Dh, device=DEVICE, dtype=DTYPE) for _ in range(2))
    valid = torch.ones(1, K, dtype=torch.bool, device=DEVICE)
    fn = {
        "triton": lambda: adapter_attention(q, k, v, valid, backend="triton"),
        "eager": lambda: adapter_attention_reference(q, k, v, valid),
        "stock": lambda: F.scaled_dot_product_attention(q, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), attn_mask=valid[:, None, None, :]),
    }[impl]
    timed(benchmark, fn)
    _record(benchmark, flops=4.0 * B * H * N * K * Dh, bytes_moved=2.0 * (2 * q.numel() + 2 * k.numel()))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", MASK_ATTENTION_SHAPES, ids=lambda s: s[0])
def test_mask_attention_forward(benchmark, cuda_only, shape, impl):
    _, B, H, Q, grid, Dh, mask_size = shape
    N = grid[0] * grid[1]
    q, ks, vs = (torch.randn(B, H, Q, Dh, device=DEVICE, dtype=DTYPE) for _ in range(3))
    k, v = (torch.randn(B, H, N, Dh, device=DEVICE, dtype=DTYPE) for _ in range(2))
    masks = torch.randn(B, Q, *mask_size, device=DEVICE, dtype=DTYPE)

    def stock():
        # SDPA over the image keys plus every mask token's own key, with the mask materialised:
        # token i sees the image tokens under mask i and only its own key among the Q extra ones.
        inside = mask_inside_grid(masks, grid, 0.0)[:, None].expand(B, H, Q, N)
        own = torch.eye(Q, dtype=torch.bool, device=DEVICE)[None, None].expand(B, H, Q, Q)
        return F.scaled_dot_product_attention(q, torch.cat([k, ks], 2), torch.cat([v, vs], 2), attn_mask=torch.cat([inside, own], -1))

    fn = {
        "triton": lambda: mask_attention(q, k, v, ks, vs, masks, grid, 0.0, backend="triton"),
        "eager": lambda: mask_attention_reference(q, k, v, ks, vs, masks, grid, 0.0),
        "stock": stock,
    }[impl]
    timed(benchmark, fn)
    _record(benchmark, flops=4.0 * B * H * Q * N * Dh, bytes_moved=2.0 * (2 * k.numel() + 4 * q.numel()) + 2.0 * B * Q * N * 4)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", POOLING_SHAPES, ids=lambda s: s[0])
def test_mask_pooling_logits(benchmark, cuda_only, shape, impl):
    _, B, Q, C, grid, mask_size, K = shape
    masks = torch.randn(B, Q, *mask_size, device=DEVICE, dtype=DTYPE)
    dense = torch.randn(B, C, *grid, device=DEVICE, dtype=DTYPE)
    text = torch.randn(K, C, device=DEVICE, dtype=DTYPE)
    compiled = torch.compile(mask_average_logits_reference) if impl == "stock" else None
    fn = {
        "triton": lambda: mask_average_logits(masks, dense, text, 50.0, backend="triton"),
        "eager": lambda: mask_average_logits_reference(masks, dense, text, 50.0),
        "stock": lambda: compiled(masks, dense, text, 50.0),
    }[impl]
    timed(benchmark, fn)
    # Bytes a single pass must move: the sampled mask rows (2 of every stride rows, whole 32-byte
    # sectors), the features once, the text once, the logits once.
    stride = mask_size[0] // grid[0]
    mask_bytes = 2.0 * B * Q * mask_size[0] * mask_size[1] * min(1.0, 2.0 / max(stride, 1))
    _record(benchmark, flops=2.0 * B * Q * C * (grid[0] * grid[1] + K), bytes_moved=mask_bytes + 2.0 * (dense.numel() + text.numel() + B * Q * K))
