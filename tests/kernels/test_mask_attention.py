"""Semantics of the masked mask-token attention contract (fisa_rt.kernels.mask_attention)."""

import torch

from fisa_rt.kernels import mask_attention_reference, mask_inside_grid


def _inputs(B=2, H=2, Q=3, grid=(4, 5), Dh=8, mask_size=(8, 10)):
    N = grid[0] * grid[1]
    t = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
    return t(B, H, Q, Dh), t(B, H, N, Dh), t(B, H, N, Dh), t(B, H, Q, Dh), t(B, H, Q, Dh), t(B, Q, *mask_size)


def test_equals_dense_attention_over_self_and_masked_tokens():
    q, k, v, ks, vs, masks = _inputs()
    out = mask_attention_reference(q, k, v, ks, vs, masks, (4, 5))
    inside = mask_inside_grid(masks, (4, 5), 0.0)
    for b in range(2):
        for qi in range(3):
            keys = torch.cat([k[b, :, inside[b, qi]], ks[b, :, qi : qi + 1]], dim=1)
            values = torch.cat([v[b, :, inside[b, qi]], vs[b, :, qi : qi + 1]], dim=1)
            expected = torch.nn.functional.scaled_dot_product_attention(q[b, :, qi : qi + 1], keys, values)
            torch.testing.assert_close(out[b, :, qi : qi + 1], expected)


def test_tokens_outside_the_mask_have_no_influence():
    q, k, v, ks, vs, masks = _inputs()
    out = mask_attention_reference(q, k, v, ks, vs, masks, (4, 5))
    outside = ~mask_inside_grid(masks, (4, 5), 0.0)  # (B, Q, N)
    for qi in range(3):
        k2, v2 = k.clone(), v.clone()
        for b in range(2):
            k2[b, :, outside[b, qi]] = 100 * torch.randn_like(k2[b, :, outside[b, qi]])
            v2[b, :, outside[b, qi]] = 100 * torch.randn_like(v2[b, :, outside[b, qi]])
        again = mask_attention_reference(q, k2, v2, ks, vs, masks, (4, 5))
        torch.testing.assert_close(again[:, :, qi], out[:, :, qi])


def test_empty_mask_returns_own_value():
    q, k, v, ks, vs, masks = _inputs()
    masks[:, 1] = -1.0
    out = mask_attention_reference(q, k, v, ks, vs, masks, (4, 5))
    torch.testing.assert_close(out[:, :, 1], vs[:, :, 1])


def test_threshold_applies_to_bilinearly_resized_logits():
    masks = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    inside = mask_inside_grid(masks, (2, 2), threshold=1.5)
    assert inside.tolist() == [[[False, False, True, True]]]
