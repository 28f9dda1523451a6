"""The fused masked attention of mask tokens against its float64 reference (CPU: Triton interpreter;
GPU: the kernels issue's shape grid). The inside/outside decisions come from the mask logits inside the
kernel, so the tests vary the mask resolution against the token grid (up-, down- and non-integer resizes)."""

import pytest
import torch

from fisa_rt.kernels import mask_attention, mask_attention_layout, mask_attention_reference, mask_inside_grid
from fisa_rt.kernels.mask_attention import build_mask_layout
from fisa_rt.kernels.mask_attention_triton import mask_attention_triton

from kernel_checks import (
    DEVICE, DTYPES, GRAD_LAYOUTS, TOLERANCE, assert_close, box_mask_logits, random_mask_logits, strided_grad,
)

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
    out = mask_attention(*tensors, masks, grid, threshold, kernels="triton")
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


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
def test_non_contiguous_incoming_gradient(layout, poisoned):
    B, H, Q, grid, Dh = 1, 2, 6, (4, 5), 16
    N = grid[0] * grid[1]
    tensors = [torch.randn(B, H, n, Dh, device=DEVICE, requires_grad=True) for n in (Q, N, N, Q, Q)]
    masks, threshold = random_mask_logits((B, Q, 8, 10), [grid])
    masks = masks.to(DEVICE)
    out = mask_attention(*tensors, masks, grid, threshold, kernels="triton")
    grad = strided_grad(out, layout)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in tensors]
    mask_attention_reference(*ref_inputs, masks.double(), grid, threshold).backward(grad.double())
    for name, t, r in zip(("q", "k_img", "v_img", "k_self", "v_self"), tensors, ref_inputs):
        assert_close(t.grad, r.grad, TOLERANCE[torch.float32][1], what=f"d{name}")


def test_outside_tokens_cannot_leak_into_the_kernel_output(poisoned):
    B, H, Q, grid, Dh = 1, 2, 4, (4, 4), 16
    N = grid[0] * grid[1]
    q, k, v, ks, vs = (torch.randn(B, H, n, Dh, device=DEVICE) for n in (Q, N, N, Q, Q))
    masks = torch.full((B, Q, 4, 4), -5.0, device=DEVICE)
    masks[:, :, :2] = 5.0  # every mask covers the top half only
    out = mask_attention(q, k, v, ks, vs, masks, grid, kernels="triton")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, N // 2 :] = 1e4
    v2[:, :, N // 2 :] = 1e4 * torch.randn_like(v2[:, :, N // 2 :])
    again = mask_attention(q, k2, v2, ks, vs, masks, grid, kernels="triton")
    assert torch.equal(out, again)


def test_mask_logits_of_another_dtype_and_layout(poisoned):
    # the generator's logits may be half precision and non-contiguous; the kernel samples them in fp32
    B, H, Q, grid, Dh = 1, 1, 6, (5, 5), 16
    N = grid[0] * grid[1]
    q, k, v, ks, vs = (torch.randn(B, H, n, Dh, device=DEVICE) for n in (Q, N, N, Q, Q))
    masks, threshold = random_mask_logits((B, Q, 10, 10), [grid])
    strided = masks.to(DEVICE).transpose(-1, -2).contiguous().transpose(-1, -2)
    out = mask_attention(q, k, v, ks, vs, strided, grid, threshold, kernels="triton")
    expected = mask_attention_reference(
        q.double(), k.double(), v.double(), ks.double(), vs.double(), masks.double().to(DEVICE), grid, threshold
    )
    assert_close(out, expected, TOLERANCE[torch.float32][0])


@pytest.mark.parametrize("splits", [1, 3])
def test_realistic_size_block_sparse_forward_and_backward(splits, poisoned):
    """Q = 100 masks covering 5-30 % of a 32 x 32 grid (N = 1024), split-K and not: matches the reference."""
    B, H, Q, grid, Dh = 1, 2, 100, (32, 32), 16
    N = grid[0] * grid[1]
    tensors = [torch.randn(B, H, n, Dh, device=DEVICE, requires_grad=True) for n in (Q, N, N, Q, Q)]
    masks = box_mask_logits(B, Q, 64).to(DEVICE)
    layout = mask_attention_layout(masks, grid, 0.0, kernels="triton")
    out = mask_attention_triton(*tensors, layout, splits=splits)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in tensors]
    expected = mask_attention_reference(*ref_inputs, masks.double(), grid, 0.0)
    expected.backward(grad.double())
    fwd_tol, bwd_tol = TOLERANCE[torch.float32]
    assert_close(out, expected, fwd_tol)
    for name, t, r in zip(("q", "k_img", "v_img", "k_self", "v_self"), tensors, ref_inputs):
        assert_close(t.grad, r.grad, bwd_tol, what=f"d{name}")


def test_layout_lists_exactly_the_occupied_blocks():
    masks = box_mask_logits(2, 37, 40)
    grid = (20, 20)
    bq, bn = 16, 64
    layout = build_mask_layout(masks, grid, 0.0, (bq, bn))
    inside = mask_inside_grid(masks, grid, 0.0)
    assert torch.equal(layout.inside, inside.to(torch.int8))
    QB, NB = layout.block_indices.shape[1:]
    assert (QB, NB) == (3, 7)
    for b in range(2):
        for qb in range(QB):
            occupied = [nb for nb in range(NB) if inside[b, qb * bq : (qb + 1) * bq, nb * bn : (nb + 1) * bn].any()]
            count = int(layout.block_counts[b, qb])
            assert layout.block_indices[b, qb, :count].tolist() == occupied
            assert sorted(layout.block_indices[b, qb].tolist()) == list(range(NB))


def test_blocks_outside_every_mask_are_never_read(poisoned):
    """Tokens of blocks no mask of a block touches are NaN: a kernel that loaded them would return NaN."""
    B, H, Q, grid, Dh = 1, 2, 40, (16, 16), 16
    N = grid[0] * grid[1]
    q, ks, vs = (torch.randn(B, H, Q, Dh, device=DEVICE) for _ in range(3))
    masks = torch.full((B, Q, 16, 16), -5.0, device=DEVICE)
    masks[:, :, :4] = 5.0  # every mask covers the top quarter: tokens 0-63
    k, v = (torch.randn(B, H, N, Dh, device=DEVICE) for _ in range(2))
    layout = mask_attention_layout(masks, grid, 0.0, kernels="triton")
    _, block_n = layout.block_q, layout.block_n
    k[:, :, block_n:] = float("nan")
    v[:, :, block_n:] = float("nan")
    assert int(layout.block_counts.max()) == 1
    out = mask_attention(q, k, v, ks, vs, masks, grid, kernels="triton", layout=layout)
    expected = mask_attention_reference(q.double(), k[:, :, :block_n].double(), v[:, :, :block_n].double(), ks.double(),
                                        vs.double(), masks[:, :, :4].double(), (4, 16))
    assert_close(out, expected, TOLERANCE[torch.float32][0])


def test_one_layout_serves_every_layer_and_head(poisoned):
    B, H, Q, grid, Dh = 2, 3, 9, (6, 6), 16
    N = grid[0] * grid[1]
    masks, threshold = random_mask_logits((B, Q, 12, 12), [grid])
    masks = masks.to(DEVICE)
    layout = mask_attention_layout(masks, grid, threshold, kernels="triton")
    for _ in range(2):  # two "layers"
        q, k, v, ks, vs = (torch.randn(B, H, n, Dh, device=DEVICE) for n in (Q, N, N, Q, Q))
        out = mask_attention(q, k, v, ks, vs, masks, grid, threshold, kernels="triton", layout=layout)
        expected = mask_attention_reference(
            q.double(), k.double(), v.double(), ks.double(), vs.double(), masks.double(), grid, threshold
        )
        assert_close(out, expected, TOLERANCE[torch.float32][0])


def test_a_layout_of_other_masks_is_rejected():
    q, k, v, ks, vs = (torch.randn(1, 1, n, 16, device=DEVICE) for n in (4, 16, 16, 4, 4))
    masks = torch.randn(1, 4, 4, 4, device=DEVICE)
    layout = mask_attention_layout(torch.randn(1, 5, 4, 4, device=DEVICE), (4, 4), kernels="triton")
    with pytest.raises(ValueError, match="layout covers"):
        mask_attention(q, k, v, ks, vs, masks, (4, 4), kernels="triton", layout=layout)
