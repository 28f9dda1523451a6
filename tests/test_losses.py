import torch
import torch.nn.functional as F

from fisa_rt.train.losses import LossWeights, hungarian_match, resize_targets, set_loss


def _masks():
    a = torch.zeros(4, 4)
    a[:2] = 1
    b = 1 - a
    return torch.stack([a, b])


def test_matching_finds_the_permutation():
    targets = _masks()
    labels = torch.tensor([0, 1])
    mask_logits = torch.stack([targets[1], torch.zeros(4, 4), targets[0]]) * 20 - 10
    class_logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    rows, cols = hungarian_match(class_logits, mask_logits, labels, targets, LossWeights())
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (2, 0)]


def test_correct_prediction_costs_less_than_wrong_one():
    targets = [_masks()]
    labels = [torch.tensor([0, 1])]
    good_masks = (targets[0] * 20 - 10)[None]
    good_classes = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]]])
    good = sum(set_loss(good_classes, good_masks, labels, targets, LossWeights()).values())
    bad = sum(set_loss(good_classes.flip(-1), -good_masks, labels, targets, LossWeights()).values())
    assert good < 0.5 < bad


def test_image_without_segments_trains_towards_void():
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    masks = torch.zeros(1, 3, 4, 4, requires_grad=True)
    loss = set_loss(logits, masks, [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4, 4)], LossWeights())
    sum(loss.values()).backward()
    assert logits.grad[0, :, -1].lt(0).all()  # raising the void logit lowers the loss


def test_targets_are_area_averaged_to_prediction_size():
    (resized,) = resize_targets([torch.ones(1, 8, 8, dtype=torch.bool)], (4, 4))
    assert torch.equal(resized, torch.ones(1, 4, 4))


def test_void_class_weight_is_applied():
    """Unmatched proposals learn void at weight 0.1 (Mask2Former's eos_coef): one matched segment and two unmatched
    proposals, against a cross-entropy computed here (with void alone the weighted mean would not show it)."""
    targets = [_masks()[:1]]
    labels = [torch.tensor([0])]
    torch.manual_seed(0)
    cls = torch.randn(1, 3, 3)
    masks = torch.randn(1, 3, 4, 4)
    w = LossWeights()
    rows, cols = hungarian_match(cls[0], masks[0], labels[0], targets[0], w)
    tgt = torch.full((3,), 2)
    tgt[rows] = labels[0][cols]
    want = F.cross_entropy(cls[0], tgt, weight=torch.tensor([1.0, 1.0, 0.1]))
    got = set_loss(cls, masks, labels, targets, w)["class"]
    torch.testing.assert_close(got, w.class_weight * want)
    assert not torch.allclose(got, w.class_weight * F.cross_entropy(cls[0], tgt))


def test_matching_prefers_the_confident_class_when_masks_tie():
    targets = _masks()
    labels = torch.tensor([0, 1])
    mask_logits = torch.zeros(2, 4, 4)  # masks carry no information: only the class cost decides
    class_logits = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    rows, cols = hungarian_match(class_logits, mask_logits, labels, targets, LossWeights())
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]


def test_each_term_carries_its_own_weight():
    targets = [_masks()]
    labels = [torch.tensor([0, 1])]
    torch.manual_seed(1)
    cls, masks = torch.randn(1, 3, 3), torch.randn(1, 3, 4, 4)
    base = set_loss(cls, masks, labels, targets, LossWeights())
    for name, field in (("class", "class_weight"), ("mask", "mask_weight"), ("dice", "dice_weight")):
        scaled = set_loss(cls, masks, labels, targets, LossWeights(**{field: 2 * getattr(LossWeights(), field)}))
        torch.testing.assert_close(scaled[name], 2 * base[name])


def test_the_class_cost_is_weighted_in_the_matching():
    """Masks say query 0 is target 0; classes say it is target 1: the class weight decides which wins (a matching
    cost without it passed the other tests, the set loss's own weight being pinned)."""
    targets = _masks()
    labels = torch.tensor([0, 1])
    mask_logits = targets * 2 - 1  # query q weakly on target q
    class_logits = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])  # query 0 says label 1, query 1 label 0
    for weight, expected in ((0.1, [(0, 0), (1, 1)]), (100.0, [(0, 1), (1, 0)])):
        rows, cols = hungarian_match(class_logits, mask_logits, labels, targets, LossWeights(class_weight=weight))
        assert sorted(zip(rows.tolist(), cols.tolist())) == expected, weight
