"""The fused mask-average pooling -> cosine logits against its float64 reference (CPU: Triton
interpreter; GPU: the kernels issue's shape grid: C 512-1536, grids 16²-128², K <= 2000)."""

import pytest
import torch

from fisa_rt.kernels import mask_average_logits, mask_average_logits_reference

from kernel_checks import (
    DEVICE, DTYPES, GRAD_LAYOUTS, TOLERANCE, assert_close, box_mask_logits, random_mask_logits, strided_grad,
)

# (B, Q, C, feature grid, mask size, K, weighting)
CPU_SHAPES = [
    (2, 5, 24, (4, 5), (8, 10), 7, "binary"),
    (1, 20, 40, (7, 3), (13, 5), 3, "sigmoid"),
    (1, 3, 16, (6, 6), (6, 6), 1, "binary"),
    (2, 17, 33, (5, 4), (20, 16), 19, "binary"),
]
GPU_SHAPES = [
    (2, 250, 1536, (32, 32), (256, 256), 133, "binary"),  # fisa-convnext-l at 1024 px, COCO
    (1, 250, 1536, (32, 32), (256, 256), 1203, "sigmoid"),  # LVIS
    (2, 100, 768, (16, 16), (64, 64), 150, "binary"),
    (1, 100, 512, (128, 128), (256, 256), 2000, "binary"),
]
SHAPES = CPU_SHAPES + (GPU_SHAPES if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_reference(shape, dtype, poisoned):
    B, Q, C, grid, mask_size, K, weighting = shape
    # An empty mask under sigmoid weights pools ~1e-22-sized weights, which any half-precision path
    # (the reference's included) flushes to zero; it is tested with binary weights only.
    masks, threshold = random_mask_logits((B, Q, *mask_size), [grid], empty=weighting == "binary")
    masks = masks.to(DEVICE)
    dense = torch.randn(B, C, *grid, device=DEVICE, dtype=dtype, requires_grad=True)
    text = torch.randn(K, C, device=DEVICE, dtype=dtype, requires_grad=True)
    scale = torch.tensor(12.5, device=DEVICE, requires_grad=True)
    out = mask_average_logits(masks, dense, text, scale, weighting, threshold, kernels="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (dense, text, scale)]
    expected = mask_average_logits_reference(masks.double(), *ref_inputs, weighting, threshold)
    expected.backward(grad.double())
    fwd_tol, bwd_tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    assert_close(out / 12.5, expected / 12.5, fwd_tol)
    for name, t, r in zip(("dense", "text", "logit_scale"), (dense, text, scale), ref_inputs):
        assert_close(t.grad, r.grad, bwd_tol, what=f"d{name}")
    if weighting == "binary":  # mask 0 is empty: it scores 0 against every class
        assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_non_contiguous_incoming_gradient(layout, poisoned):
    masks, threshold = random_mask_logits((2, 6, 8, 10), [(4, 5)])
    masks = masks.to(DEVICE)
    dense = torch.randn(2, 24, 4, 5, device=DEVICE, requires_grad=True)
    text = torch.randn(7, 24, device=DEVICE, requires_grad=True)
    out = mask_average_logits(masks, dense, text, 12.5, "binary", threshold, kernels="triton")
    grad = strided_grad(out, layout)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (dense, text)]
    mask_average_logits_reference(masks.double(), *ref_inputs, 12.5, "binary", threshold).backward(grad.double())
    for name, t, r in zip(("dense", "text"), (dense, text), ref_inputs):
        assert_close(t.grad, r.grad, TOLERANCE[torch.float32][1], what=f"d{name}")


def test_float_scale_and_channels_last_features(poisoned):
    masks, threshold = random_mask_logits((1, 4, 9, 9), [(3, 3)])
    dense = torch.randn(1, 16, 3, 3, device=DEVICE).to(memory_format=torch.channels_last)
    text = torch.randn(5, 16, device=DEVICE)
    out = mask_average_logits(masks.to(DEVICE), dense, text, 3.0, "binary", threshold, kernels="triton")
    expected = mask_average_logits_reference(
        masks.double().to(DEVICE), dense.double(), text.double(), 3.0, "binary", threshold
    )
    assert_close(out, expected, TOLERANCE[torch.float32][0])


def test_a_threshold_far_from_zero(poisoned):
    """The other tests' thresholds sit near 0, where a kernel comparing with 0 instead agreed on most cells (a
    review's mutation passed there in most runs)."""
    masks, threshold = random_mask_logits((2, 6, 8, 10), [(4, 5)], near=0.8)
    dense = torch.randn(2, 24, 4, 5, device=DEVICE)
    text = torch.randn(7, 24, device=DEVICE)
    out = mask_average_logits(masks.to(DEVICE), dense, text, 12.5, "binary", threshold, kernels="triton")
    expected = mask_average_logits_reference(
        masks.double().to(DEVICE), dense.double(), text.double(), 12.5, "binary", threshold
    )
    assert threshold > 0.3
    assert_close(out, expected, TOLERANCE[torch.float32][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_realistic_size_forward_and_backward(dtype, poisoned):
    """Q = 120 box masks (5-30 % of the image) at 64 x 64 over a 32 x 32 feature grid (HW = 1024), small C."""
    B, Q, C, K = 1, 120, 32, 21
    masks = box_mask_logits(B, Q, 64).to(DEVICE)
    dense = torch.randn(B, C, 32, 32, device=DEVICE, dtype=dtype, requires_grad=True)
    text = torch.randn(K, C, device=DEVICE, dtype=dtype, requires_grad=True)
    out = mask_average_logits(masks, dense, text, 20.0, "binary", 0.0, kernels="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (dense, text)]
    expected = mask_average_logits_reference(masks.double(), *ref_inputs, 20.0, "binary", 0.0)
    expected.backward(grad.double())
    fwd_tol, bwd_tol = TOLERANCE[dtype]
    assert_close(out / 20.0, expected / 20.0, fwd_tol)
    for name, t, r in zip(("dense", "text"), (dense, text), ref_inputs):
        assert_close(t.grad, r.grad, bwd_tol, what=f"d{name}")
