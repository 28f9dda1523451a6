import pytest
import torch

from fisa_rt.config import PostprocessConfig
from fisa_rt.postprocess import instance_inference, panoptic_inference, resize_mask_logits, semantic_inference

BIG = 10.0


def _class_logits(rows):
    """rows: (class index or 'void', confidence logit) per proposal; K = 2 classes + void."""
    logits = torch.full((len(rows), 3), 0.0)
    for i, (cls, strength) in enumerate(rows):
        logits[i, 2 if cls == "void" else cls] = strength
    return logits


def _mask(region):
    m = torch.full((4, 4), -BIG)
    m[region] = BIG
    return m


LEFT = (slice(None), slice(0, 2))
RIGHT = (slice(None), slice(2, 4))
TOP_RIGHT = (slice(0, 2), slice(2, 4))
ALL = (slice(None), slice(None))


def test_semantic_labels_follow_masks_and_ignore_void():
    class_logits = _class_logits([(0, BIG), (1, BIG), ("void", BIG)])
    masks = torch.stack([_mask(LEFT), _mask(RIGHT), _mask(ALL)])
    result = semantic_inference(class_logits, masks)
    expected = torch.tensor([[0, 0, 1, 1]] * 4)
    assert torch.equal(result.label_map, expected)
    assert (result.confidence > 0.9).all()


def test_panoptic_known_answer():
    class_logits = _class_logits([
        (0, BIG),        # thing, left half
        (1, BIG),        # stuff, right half
        (1, BIG - 1),    # same stuff class, top right: merges into segment 2
        ("void", BIG),   # void: dropped
        (0, 0.5),        # low confidence: dropped
        (0, BIG - 2),    # thing hidden under proposal 0: overlap below threshold, dropped
    ])
    masks = torch.stack([_mask(LEFT), _mask(RIGHT), _mask(TOP_RIGHT), _mask(ALL), _mask(ALL), _mask(LEFT)])
    result = panoptic_inference(class_logits, masks, is_thing=[True, False], cfg=PostprocessConfig())
    assert [(s.id, s.category_id, s.is_thing, s.area) for s in result.segments] == [(1, 0, True, 8), (2, 1, False, 8)]
    assert torch.equal(result.segment_map, torch.tensor([[1, 1, 2, 2]] * 4, dtype=torch.int32))


def test_panoptic_with_nothing_confident_is_empty():
    result = panoptic_inference(_class_logits([("void", BIG)]), _mask(ALL)[None], [True, False], PostprocessConfig())
    assert result.segments == [] and not result.segment_map.any()


def test_instance_known_answer_keeps_things_only():
    class_logits = _class_logits([(0, BIG), (1, BIG), (0, BIG - 3)])
    masks = torch.stack([_mask(LEFT), _mask(RIGHT), _mask(TOP_RIGHT)])
    result = instance_inference(class_logits, masks, is_thing=[True, False], cfg=PostprocessConfig(instance_topk=2))
    assert result.labels.tolist() == [0, 0]
    assert torch.equal(result.masks[0], masks[0] > 0) and torch.equal(result.masks[1], masks[2] > 0)
    assert result.scores[0] > result.scores[1] > 0


def test_is_thing_length_is_checked():
    with pytest.raises(ValueError, match="is_thing has 1 entries for 2 classes"):
        panoptic_inference(_class_logits([(0, BIG)]), _mask(ALL)[None], [True], PostprocessConfig())


def test_resize_mask_logits_keeps_leading_dims():
    assert resize_mask_logits(torch.randn(2, 3, 4, 4), (8, 12)).shape == (2, 3, 8, 12)


def test_restore_mask_logits_drops_the_padding():
    from fisa_rt.postprocess import restore_mask_logits

    logits = torch.full((1, 4, 4), -5.0)  # predicted at 1/2 of an 8 x 8 canvas
    logits[:, :2, :3] = 5.0  # the image occupies the top-left 4 x 6 of the canvas
    restored = restore_mask_logits(logits, (8, 8), (4, 6), (8, 12))
    assert restored.shape == (1, 8, 12)
    assert (restored[:, 1:-1, 1:-1] > 0).all()  # interior of the image: no padding leaks in
