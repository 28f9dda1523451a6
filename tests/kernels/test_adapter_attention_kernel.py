"""The fused adapter-attention kernel against its float64 reference (CPU: Triton interpreter; GPU: the
full shape grid of the kernels issue)."""

import pytest
import torch

from fisa_rt.kernels import adapter_attention, adapter_attention_reference

from kernel_checks import DEVICE, DTYPES, GRAD_LAYOUTS, TOLERANCE, assert_close, strided_grad

# (B, Bt, H, N, K, Dh, padded): text per image or shared (Bt = 1); K = 1, K not a multiple of any block,
# padded classes, and one image whose classes are all padding.
CPU_SHAPES = [
    (2, 2, 2, 37, 5, 16, True),
    (3, 1, 2, 20, 1, 32, False),
    (1, 1, 1, 50, 40, 16, True),
    (2, 1, 3, 16, 17, 8, False),
]
GPU_SHAPES = [
    (2, 1, 8, 1024, 133, 64, False),
    (2, 2, 8, 4096, 150, 32, True),
    (1, 1, 12, 16384, 1203, 64, True),
    (4, 1, 4, 1600, 1, 128, False),
    (1, 1, 8, 1000, 2000, 96, True),
]
SHAPES = CPU_SHAPES + (GPU_SHAPES if DEVICE == "cuda" else [])


def _inputs(B, Bt, H, N, K, Dh, padded, dtype):
    q = torch.randn(B, H, N, Dh, device=DEVICE, dtype=dtype, requires_grad=True)
    k = torch.randn(Bt, H, K, Dh, device=DEVICE, dtype=dtype, requires_grad=True)
    v = torch.randn(Bt, H, K, Dh, device=DEVICE, dtype=dtype, requires_grad=True)
    valid = None
    if padded:
        valid = torch.rand(Bt, K, device=DEVICE) > 0.3
        valid[:, 0] = True
        if Bt > 1:
            valid[-1] = False  # nothing to attend to: zeros
    return q, k, v, valid


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_reference(shape, dtype, poisoned):
    q, k, v, valid = _inputs(*shape, dtype)
    out = adapter_attention(q, k, v, valid, kernels="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = adapter_attention_reference(*ref_inputs, valid)
    expected.backward(grad.double())
    fwd_tol, bwd_tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    assert_close(out, expected, fwd_tol)
    for name, t, r in zip("qkv", (q, k, v), ref_inputs):
        assert_close(t.grad, r.grad, bwd_tol, what=f"d{name}")
    if valid is not None and not valid[-1].any():
        assert torch.equal(out[-1], torch.zeros_like(out[-1]))


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_non_contiguous_incoming_gradient(layout, poisoned):
    q, k, v, valid = _inputs(2, 1, 2, 19, 6, 16, True, torch.float32)
    out = adapter_attention(q, k, v, valid, kernels="triton")
    grad = strided_grad(out, layout)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    adapter_attention_reference(*ref_inputs, valid).backward(grad.double())
    for name, t, r in zip("qkv", (q, k, v), ref_inputs):
        assert_close(t.grad, r.grad, TOLERANCE[torch.float32][1], what=f"d{name}")


def test_strided_views_as_the_adapter_makes_them(poisoned):
    # SEVE hands the kernel permuted views of one projection, not contiguous tensors.
    B, N, H, Dh, K = 2, 24, 2, 16, 7
    q = torch.randn(B, N, H, Dh, device=DEVICE).transpose(1, 2)
    kv = torch.randn(1, K, 2, H, Dh, device=DEVICE).permute(2, 0, 3, 1, 4)
    out = adapter_attention(q, kv[0], kv[1], kernels="triton")
    assert_close(
        out, adapter_attention_reference(q.double(), kv[0].double(), kv[1].double()), TOLERANCE[torch.float32][0]
    )


def test_auto_uses_the_reference_on_cpu_and_rejects_unknown_backends():
    q, k, v, _ = _inputs(1, 1, 1, 4, 3, 8, False, torch.float32)
    if DEVICE == "cpu":
        assert torch.equal(adapter_attention(q, k, v), adapter_attention_reference(q, k, v))
    with pytest.raises(ValueError, match="kernels must be one of"):
        adapter_attention(q, k, v, kernels="cuda")


def test_realistic_size_and_deterministic_gradients(poisoned):
    """N = 1024 tokens, a vocabulary shared by two images: matches the reference, and two backward passes
    give bitwise-equal gradients (dK/dV are written once per class block, never added atomically)."""
    q, k, v, valid = _inputs(2, 1, 1, 1024, 21, 16, True, torch.float32)
    grads = []
    for _ in range(2):
        for t in (q, k, v):
            t.grad = None
        out = adapter_attention(q, k, v, valid, kernels="triton")
        out.backward(torch.ones_like(out))
        grads.append([t.grad.clone() for t in (q, k, v)])
    ref_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = adapter_attention_reference(*ref_inputs, valid)
    expected.backward(torch.ones_like(expected))
    fwd_tol, bwd_tol = TOLERANCE[torch.float32]
    assert_close(out, expected, fwd_tol)
    for name, g, r in zip("qkv", grads[0], ref_inputs):
        assert_close(g, r.grad, bwd_tol, what=f"d{name}")
    assert all(torch.equal(a, b) for a, b in zip(*grads))
