"""The fused masked attention of mask tokens against its float64 reference (CPU: Triton interpreter;
GPU: the kernels issue's shape grid). The inside/outside decisions come from the mask logits inside the
kernel, so the tests vary the mask resolution against the token grid (up-, down- and non-integer resizes)."""

import pytest
import torch

from fisa_rt.kernels import mask_attention, mask_attention_reference

from kernel_checks import DEVICE, DTYPES, TOLERANCE, assert_close, random_mask_logits

# (B, H, Q, grid, Dh, mask size)
CPU_SHAPES = [
    (2, 2, 5, (4, 5), 16, (8, 10)),
    (1, 1, 20, (7, 3), 32, (13, 5)),
    (1, 2, 3, (6, 6), 16, (6, 6)),
    (2, 1, 17, (5, 4), 8, (3, 2)),
]
GPU_SHAPES = [
    (2, 12, 100, (40, 40), 64, (160, 160)),  # fisa-vit-b16 at 640 px
    (1, 12, 250, (64, 64), 64, (256, 256)),
    (1, 16, 250, (128, 128), 64, (256, 256)),  # N = 16k
    (2, 8, 150, (32, 48), 128, (100, 75)),
]
SHAPES = CPU_SHAPES + (GPU_SHAPES if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_reference(shape, dtype, poisoned):
    B, H, Q, grid, Dh, mask_size = shape
    N = grid[0] * grid[1]
    tensors = [
        torch.randn(*s, device=DEVICE, dtype=dtype, requires_grad=True)
        for s in ((B, H, Q, Dh), (B, H, N, Dh), (B, H, N, Dh), (B, H, Q, Dh), (B, H, Q, Dh))
    ]
    masks, threshold = random_mask_logits((B, Q, *mask_size), [grid])
    masks = masks.to(DEVICE)
    out = mask_attention(*tensors, masks, grid, threshold, backend="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in tensors]
    expected = mask_attention_reference(*ref_inputs, masks.double(), grid, threshold)
    expected.backward(grad.double())
    fwd_tol, bwd_tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    assert_close(out, expected, fwd_tol)
    for name, t, r in zip(("q", "k_img", "v_img", "k_self", "v_self"), tensors, ref_inputs):
        assert_close(t.grad, r.grad, bwd_tol, what=f"d{name}")
    # mask 0 is empty in every image: the token keeps its own value
    assert_close(out[:, :, 0], tensors[4].detach()[:, :, 0].double(), fwd_tol, what="empty mask")


def test_outside_tokens_cannot_leak_into_the_kernel_output(poisoned):
    B, H, Q, grid, Dh = 1, 2, 4, (4, 4), 16
    N = grid[0] * grid[1]
    q, k, v, ks, vs = (torch.randn(B, H, n, Dh, device=DEVICE) for n in (Q, N, N, Q, Q))
    masks = torch.full((B, Q, 4, 4), -5.0, device=DEVICE)
    masks[:, :, :2] = 5.0  # every mask covers the top half only
    out = mask_attention(q, k, v, ks, vs, masks, grid, backend="triton")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, N // 2 :] = 1e4
    v2[:, :, N // 2 :] = 1e4 * torch.randn_like(v2[:, :, N // 2 :])
    again = mask_attention(q, k2, v2, ks, vs, masks, grid, backend="triton")
    assert torch.equal(out, again)


def test_mask_logits_of_another_dtype_and_layout(poisoned):
    # the generator's logits may be half precision and non-contiguous; the kernel samples them in fp32
    B, H, Q, grid, Dh = 1, 1, 6, (5, 5), 16
    N = grid[0] * grid[1]
    q, k, v, ks, vs = (torch.randn(B, H, n, Dh, device=DEVICE) for n in (Q, N, N, Q, Q))
    masks, threshold = random_mask_logits((B, Q, 10, 10), [grid])
    strided = masks.to(DEVICE).transpose(-1, -2).contiguous().transpose(-1, -2)
    out = mask_attention(q, k, v, ks, vs, strided, grid, threshold, backend="triton")
    expected = mask_attention_reference(q.double(), k.double(), v.double(), ks.double(), vs.double(), masks.double().to(DEVICE), grid, threshold)
    assert_close(out, expected, TOLERANCE[torch.float32][0])
