"""Semantics of the adapter-attention contract (fisa_rt.kernels.adapter_attention)."""

import pytest
import torch

from fisa_rt.kernels import adapter_attention_reference


def _qkv(B=2, H=3, N=11, K=5, Dh=8, Bt=None, dtype=torch.float64):
    Bt = B if Bt is None else Bt
    return (
        torch.randn(B, H, N, Dh, dtype=dtype),
        torch.randn(Bt, H, K, Dh, dtype=dtype),
        torch.randn(Bt, H, K, Dh, dtype=dtype),
    )


def test_matches_scaled_dot_product_attention():
    q, k, v = _qkv()
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(adapter_attention_reference(q, k, v), expected)


def test_padded_classes_are_the_same_as_absent_ones():
    q, k, v = _qkv(K=6)
    valid = torch.tensor([[True, True, False, True, False, True], [True, False, False, False, False, False]])
    out = adapter_attention_reference(q, k, v, valid)
    for b in range(2):
        keep = valid[b]
        alone = adapter_attention_reference(q[b : b + 1], k[b : b + 1, :, keep], v[b : b + 1, :, keep])
        torch.testing.assert_close(out[b : b + 1], alone)


def test_rows_without_any_valid_class_are_zero():
    q, k, v = _qkv(B=2)
    valid = torch.tensor([[False] * 5, [True] * 5])
    out = adapter_attention_reference(q, k, v, valid)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all()


def test_shared_text_broadcasts_over_the_batch():
    q, k, v = _qkv(B=3, Bt=1)
    out = adapter_attention_reference(q, k, v)
    per_image = adapter_attention_reference(q, k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1))
    torch.testing.assert_close(out, per_image)


def test_single_class_returns_its_value():
    q, k, v = _qkv(K=1)
    torch.testing.assert_close(adapter_attention_reference(q, k, v), v.expand_as(q))


@pytest.mark.parametrize(
    "shapes,message",
    [
        (((2, 3, 4, 8), (2, 3, 5, 8), (2, 3, 6, 8)), "same shape"),
        (((2, 3, 4, 8), (3, 3, 5, 8), (3, 3, 5, 8)), "does not fit"),
        (((2, 3, 4), (2, 3, 5, 8), (2, 3, 5, 8)), "4-D"),
    ],
)
def test_bad_shapes_are_rejected(shapes, message):
    with pytest.raises(ValueError, match=message):
        adapter_attention_reference(*(torch.randn(*s) for s in shapes))
