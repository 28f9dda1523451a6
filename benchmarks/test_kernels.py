"""Kernel micro-benchmarks: each fused kernel, forward and forward+backward, against (a) the eager PyTorch
reference, (b) torch.compile of that reference and (c) scaled_dot_product_attention for the attentions —
flash SDPA without a mask for adapter attention (every class valid), SDPA with a materialised boolean mask
for masked attention — at the paper's shapes (fisa-convnext-l at 1024 px with COCO 133 / ADE 150 / LVIS
1203 classes) and the edge shapes (fisa-vit-b16 at 640 px).

Each case is timed by ``triton.testing.do_bench`` (CUDA events around many back-to-back calls, median) and
recorded in ``extra_info`` (ms, TFLOP/s, GB/s, fractions of the peaks measured on this card by
``gpu_report.measure_peaks``), which ``scripts/gpu-check.sh`` turns into the report; pytest-benchmark's own
statistics time batches of 20 calls ended by one synchronize, so launch latency is not what they measure.
"""

from __future__ import annotations

import pytest
import torch

from fisa_rt.kernels import (
    adapter_attention,
    adapter_attention_reference,
    mask_attention,
    mask_attention_layout,
    mask_attention_reference,
    mask_average_logits,
    mask_average_logits_reference,
)
from fisa_rt.kernels.adapter_attention import adapter_attention_sdpa
from fisa_rt.kernels.mask_attention import mask_attention_sdpa

from fisa_rt.kernels.traffic import bilinear_tap_bytes

from conftest import DEVICE, synchronize

DTYPE = torch.float16

# SEVE adapter attention: (name, B, H, N, K, Dh). ViT-B/16 at 640 px has 40x40 tokens, width 768, 12 heads;
# ConvNeXt-L at 1024 px after stage 1 has 64x64 tokens, width 384 (8 heads of 48: padded to 64 in-kernel).
ADAPTER_SHAPES = [
    ("vitb16-640-coco", 1, 12, 1600, 133, 64),
    ("vitb16-640-lvis", 1, 12, 1600, 1203, 64),
    ("convnextl-1024-coco", 1, 8, 16384, 133, 48),
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


@pytest.fixture(scope="session")
def peaks():
    """This card's DRAM bandwidth and fp16 tensor FLOP/s, measured once (not looked up by name)."""
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU (Triton kernels); this machine has none")
    import gpu_report

    return gpu_report.measure_peaks()


_COMPILED = {}


def compiled(fn):
    """torch.compile of an eager chain, once per chain: dynamic shapes, so each shape does not recompile."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def measure(benchmark, peaks, fn, impl: str, shape: str, mode: str, flops: float, bytes_moved: float) -> None:
    """do_bench ``fn`` into extra_info; pytest-benchmark times batches of 20 calls and one synchronize."""
    import gpu_report

    ms = gpu_report.time_ms(fn)

    def batch():
        for _ in range(20):
            fn()
        synchronize()

    benchmark.pedantic(batch, rounds=5, warmup_rounds=1)
    seconds = ms * 1e-3
    benchmark.extra_info.update(
        {
            "impl": impl,
            "shape": f"{shape} {mode}",
            "ms": ms,
            "tflops": flops / seconds / 1e12,
            "gbps": bytes_moved / seconds / 1e9,
            "compute_roofline_fraction": flops / seconds / peaks["tensor_flops_per_s"],
            "memory_roofline_fraction": bytes_moved / seconds / peaks["dram_bytes_per_s"],
        }
    )


def _with_backward(forward, inputs, mode: str):
    """``forward`` alone, or forward then backward of a fixed gradient into ``inputs``."""
    if mode == "fwd":
        return forward
    grad = torch.randn_like(forward())

    def both():
        for t in inputs:
            t.grad = None
        forward().backward(grad)

    return both


MODES = ["fwd", "fwd+bwd"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["triton", "eager", "compiled", "sdpa"])
@pytest.mark.parametrize("shape", ADAPTER_SHAPES, ids=lambda s: s[0])
def test_adapter_attention(benchmark, peaks, shape, impl, mode):
    name, B, H, N, K, Dh = shape
    q = torch.randn(B, H, N, Dh, device=DEVICE, dtype=DTYPE, requires_grad=True)
    k, v = (torch.randn(1, H, K, Dh, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(2))
    forward = {
        "triton": lambda: adapter_attention(q, k, v, kernels="triton"),
        "eager": lambda: adapter_attention_reference(q, k, v),
        "compiled": lambda: compiled(adapter_attention_reference)(q, k, v),
        # every class valid, no mask: SDPA may pick its flash kernel
        "sdpa": lambda: adapter_attention_sdpa(q, k, v),
    }[impl]
    passes = 1 if mode == "fwd" else 3.5  # backward: ~2.5x the forward's products
    measure(benchmark, peaks, _with_backward(forward, (q, k, v), mode), impl, name, mode,
            flops=passes * 4.0 * B * H * N * K * Dh, bytes_moved=passes * 2.0 * (2 * q.numel() + 2 * k.numel()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["triton", "eager", "compiled", "sdpa"])
@pytest.mark.parametrize("shape", MASK_ATTENTION_SHAPES, ids=lambda s: s[0])
def test_mask_attention(benchmark, peaks, shape, impl, mode):
    name, B, H, Q, grid, Dh, mask_size = shape
    N = grid[0] * grid[1]
    q, ks, vs = (torch.randn(B, H, Q, Dh, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(3))
    k, v = (torch.randn(B, H, N, Dh, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(2))
    masks = torch.randn(B, Q, *mask_size, device=DEVICE, dtype=DTYPE)
    # the mask decided once per forward and shared by the layers, as the model does, for every path but the
    # compiled one, which is given plain tensors and so also compiles the mask's interpolation and threshold
    layout = mask_attention_layout(masks, grid, 0.0, kernels="triton")
    forward = {
        "triton": lambda: mask_attention(q, k, v, ks, vs, masks, grid, 0.0, kernels="triton", layout=layout),
        "eager": lambda: mask_attention_reference(q, k, v, ks, vs, masks, grid, 0.0, layout=layout),
        "compiled": lambda: compiled(mask_attention_reference)(q, k, v, ks, vs, masks, grid, 0.0),
        # SDPA over the image keys plus each mask token's own key, the mask materialised (kernels' candidate)
        "sdpa": lambda: mask_attention_sdpa(q, k, v, ks, vs, masks, grid, 0.0, layout=layout),
    }[impl]
    passes = 1 if mode == "fwd" else 3.5
    measure(
        benchmark,
        peaks,
        _with_backward(forward, (q, k, v, ks, vs), mode),
        impl,
        name,
        mode,
        flops=passes * 4.0 * B * H * Q * N * Dh,
        bytes_moved=passes * (2.0 * (2 * k.numel() + 4 * q.numel()) + B * Q * N),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["triton", "eager", "compiled"])
@pytest.mark.parametrize("shape", POOLING_SHAPES, ids=lambda s: s[0])
def test_mask_pooling_logits(benchmark, peaks, shape, impl, mode):
    name, B, Q, C, grid, mask_size, K = shape
    masks = torch.randn(B, Q, *mask_size, device=DEVICE, dtype=DTYPE)
    dense = torch.randn(B, C, *grid, device=DEVICE, dtype=DTYPE, requires_grad=True)
    text = torch.randn(K, C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    forward = {
        "triton": lambda: mask_average_logits(masks, dense, text, 50.0, kernels="triton"),
        "eager": lambda: mask_average_logits_reference(masks, dense, text, 50.0),
        "compiled": lambda: compiled(mask_average_logits_reference)(masks, dense, text, 50.0),
    }[impl]
    # Bytes a single pass must move: the sampled mask rows, the features once, the text once, the logits
    # once (kernels/traffic.py's floor).
    mask_bytes = bilinear_tap_bytes(B * Q, grid, mask_size, 2)
    passes = 1 if mode == "fwd" else 3
    measure(benchmark, peaks, _with_backward(forward, (dense, text), mode), impl, name, mode,
            flops=passes * 2.0 * B * Q * C * (grid[0] * grid[1] + K),
            bytes_moved=mask_bytes + passes * 2.0 * (dense.numel() + text.numel() + B * Q * K))
