"""Semantics of the mask-average pooling -> logits contract (fisa_rt.kernels.mask_pooling)."""

import pytest
import torch
import torch.nn.functional as F

from fisa_rt.kernels import mask_average_logits_reference


def test_known_answer_on_hand_made_masks():
    dense = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    dense[0, 0] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # channel 0 on the top row
    dense[0, 1] = torch.tensor([[0.0, 0.0], [3.0, 1.0]])  # channel 1 on the bottom row
    masks = torch.tensor(
        [[[[1.0, 1.0], [-1.0, -1.0]], [[-1.0, -1.0], [1.0, -1.0]], [[-1.0] * 2] * 2]], dtype=torch.float64
    )
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    logits = mask_average_logits_reference(masks, dense, text, 10.0)
    s = 10 / 2**0.5
    expected = torch.tensor([[[10.0, 0.0, s], [0.0, 10.0, s], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(logits, expected)


def test_sigmoid_weighting_is_area_normalised():
    dense = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    masks = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    text = torch.randn(5, 6, dtype=torch.float64)
    w = masks.sigmoid()
    pooled = torch.einsum("bchw,bqhw->bqc", dense, w / (w.sum((-1, -2), keepdim=True) + 1e-8))
    expected = 3.0 * F.normalize(pooled, dim=-1) @ F.normalize(text, dim=-1).t()
    torch.testing.assert_close(mask_average_logits_reference(masks, dense, text, 3.0, "sigmoid"), expected)


def test_gradients_reach_features_and_text_not_masks():
    dense = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    text = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    masks = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    mask_average_logits_reference(masks, dense, text, 5.0).sum().backward()
    assert dense.grad is not None and text.grad is not None and masks.grad is None


def test_bad_weighting_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="weighting"):
        mask_average_logits_reference(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(2, 3), 1.0, "max")
    with pytest.raises(ValueError, match="text must be"):
        mask_average_logits_reference(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(2, 5), 1.0)
