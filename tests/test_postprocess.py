import numpy as np
import pytest
import torch

from fisa_rt.config import PostprocessConfig
from fisa_rt.postprocess import (
    best_proposal_labels,
    instance_inference,
    panoptic_inference,
    resize_labels,
    resize_mask_logits,
    resized_areas,
    semantic_inference,
)

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
    # the void proposal is the most confident and covers everything: with void in the argmax it would win every pixel
    class_logits = _class_logits([(0, BIG - 2), (1, BIG - 2), ("void", BIG)])
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
    # the keep rule is score > object_mask_threshold, strictly: a probability of exactly 1.0 at threshold 1.0 is out
    certain = torch.tensor([[100.0, 0.0, 0.0]])
    assert certain.softmax(-1).max() == 1.0
    result = panoptic_inference(certain, _mask(ALL)[None], [True, False], PostprocessConfig(object_mask_threshold=1.0))
    assert result.segments == []


def test_best_proposal_labels_known_answer():
    """Every proposal counts, void-first or not confident, by its best non-void class: the one whose class x
    mask probability is highest owns the pixel."""
    class_logits = torch.tensor([
        [1.0, 0.0, 0.0],  # class 0 (p 0.58), left half
        [0.5, 0.0, BIG],  # void-first, right half: its best non-void class is 0, p 7.5e-5
        [0.0, 2.0, 0.0],  # class 1 (p 0.79), top right
    ])
    masks = torch.stack([_mask(LEFT), _mask(RIGHT), _mask(TOP_RIGHT)])
    # bottom right: only the void-first proposal's mask covers it (7.5e-5 x 1 beats 0.79 x sigmoid(-10))
    expected = torch.tensor([[0, 0, 1, 1]] * 2 + [[0, 0, 0, 0]] * 2)
    assert torch.equal(best_proposal_labels(class_logits, masks), expected)


def test_instance_known_answer_keeps_things_only():
    class_logits = _class_logits([(0, BIG), (1, BIG), (0, BIG - 3)])
    masks = torch.stack([_mask(LEFT), _mask(RIGHT), _mask(TOP_RIGHT)])
    result = instance_inference(class_logits, masks, is_thing=[True, False], cfg=PostprocessConfig(instance_topk=2))
    assert result.labels.tolist() == [0, 0]
    assert torch.equal(result.masks[0], masks[0] > 0) and torch.equal(result.masks[1], masks[2] > 0)
    assert result.scores[0] > result.scores[1] > 0


def test_instance_score_is_class_probability_times_mean_mask_probability_inside_the_mask():
    mask = torch.full((4, 4), -BIG)
    mask[LEFT] = 1.0  # inside: sigmoid(1.0) = 0.73, not the +-10 logits where every mean is ~1 or ~0
    class_logits = torch.tensor([[BIG, 0.0, 0.0]])
    result = instance_inference(class_logits, mask[None], [True, False], PostprocessConfig(instance_topk=1))
    torch.testing.assert_close(result.scores, class_logits.softmax(-1)[:, 0] * torch.sigmoid(torch.tensor(1.0)))


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


def _semantic_whole_image(class_logits, mask_logits):
    """Semantic inference as it was before row tiles: the whole (K, H, W) score volume at once."""
    scores = torch.einsum("qk,qhw->khw", class_logits.softmax(-1)[:, :-1], mask_logits.sigmoid())
    return scores.max(0)


def _panoptic_whole_image(class_logits, mask_logits, is_thing, cfg):
    """Panoptic inference as it was before row tiles: (Q, H, W) masks at once, one segment at a time."""
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = labels.ne(class_logits.shape[-1] - 1) & (scores > cfg.object_mask_threshold)
    scores, labels, masks = scores[keep], labels[keep], mask_logits.sigmoid()[keep]
    segment_map, segments, stuff = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32), [], {}
    if len(scores) == 0:
        return segment_map, segments
    owner = (scores[:, None, None] * masks).argmax(0)
    for k in range(len(scores)):
        own = masks[k] >= 0.5
        mask = (owner == k) & own
        if mask.sum() == 0 or mask.sum() / own.sum() < cfg.overlap_threshold:
            continue
        category, area = int(labels[k]), int(mask.sum())
        if not is_thing[category] and category in stuff:
            segment_map[mask] = stuff[category][0]
            stuff[category][3] += area
            stuff[category][2] = max(stuff[category][2], float(scores[k]))
            continue
        segment = [len(segments) + 1, category, float(scores[k]), area]
        segment_map[mask] = segment[0]
        segments.append(segment)
        if not is_thing[category]:
            stuff[category] = segment
    return segment_map, [tuple(s) for s in segments]


def _owner_classes(class_logits, mask_logits, cfg):
    """The panoptic task's semantic labels: per pixel, the class of the kept proposal that owns it."""
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = labels.ne(class_logits.shape[-1] - 1) & (scores > cfg.object_mask_threshold)
    return labels[keep][(scores[keep][:, None, None] * mask_logits.sigmoid()[keep]).argmax(0)]


def _discs(generator, Q, K, H, W):
    """Class logits (Q, K + 1) and mask logits (Q, H, W) of noisy discs, so proposals overlap partly and
    some fail the overlap threshold."""
    class_logits = torch.randn(Q, K + 1, generator=generator) * 5
    y, x = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    centres = torch.rand(Q, 2, generator=generator) * torch.tensor([H, W])
    radii = (4 + 6 * torch.rand(Q, generator=generator)) * H / 37
    distance = ((y - centres[:, :1, None]) ** 2 + (x - centres[:, 1:, None]) ** 2).sqrt()
    return class_logits, 6 * (1 - distance / radii[:, None, None]) + torch.randn(Q, H, W, generator=generator)


@pytest.mark.parametrize("tile_bytes", [1, 4 * 7 * 13 * 5, 1 << 30])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_tiles_give_the_whole_image_result(monkeypatch, tile_bytes, seed):
    import fisa_rt.postprocess as post

    monkeypatch.setattr(post, "TILE_BYTES", tile_bytes)  # one row per tile, a few rows, one tile
    class_logits, mask_logits = _discs(torch.Generator().manual_seed(seed), 13, 7, 37, 29)
    is_thing = [k % 2 == 0 for k in range(7)]
    cfg = PostprocessConfig(object_mask_threshold=0.2, overlap_threshold=0.6)
    confidence, labels = _semantic_whole_image(class_logits, mask_logits)
    semantic = semantic_inference(class_logits, mask_logits)
    # BLAS may order a matmul's sums differently for fewer columns: scores agree to rounding, labels exactly.
    assert torch.equal(semantic.label_map, labels)
    torch.testing.assert_close(semantic.confidence, confidence, rtol=1e-6, atol=0)
    segment_map, segments = _panoptic_whole_image(class_logits, mask_logits, is_thing, cfg)
    panoptic = panoptic_inference(class_logits, mask_logits, is_thing, cfg)
    assert len(segments) >= 2
    assert torch.equal(panoptic.segment_map, segment_map)
    assert [(s.id, s.category_id, s.score, s.area) for s in panoptic.segments] == segments


def test_resize_labels_keeps_every_label_when_upsampling():
    from fisa_rt.postprocess import resize_labels

    labels = torch.arange(12).reshape(3, 4)
    big = resize_labels(labels, (7, 9))
    assert big.shape == (7, 9) and set(big.unique().tolist()) == set(range(12))
    assert torch.equal(resize_labels(labels, (6, 8)), labels.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert torch.equal(resize_labels(labels, (3, 4)), labels)


CLASSES = 60  # more classes than the embedded model's 20 proposals: K x H x W is the larger volume


@pytest.fixture(scope="module")
def segmenter():
    """The embedded model's Segmenter (128 px input, 32 x 32 masks) with random class embeddings; the
    tests feed it raw outputs directly, so no model runs."""
    from fisa_rt.runtime.assets import default_checkpoint
    from fisa_rt.runtime.segmenter import Segmenter
    from fisa_rt.vocab.vocabulary import Vocabulary

    seg = Segmenter.from_engine(default_checkpoint(), backend="torch", cache_dir="")
    embeddings = torch.randn(CLASSES, seg.backend.embed_dim, generator=torch.Generator().manual_seed(0))
    names = [f"class {k}" for k in range(CLASSES)]
    is_thing = [k % 3 != 0 for k in range(CLASSES)]
    seg.set_vocabulary(Vocabulary(names, is_thing), torch.nn.functional.normalize(embeddings, dim=-1).numpy())
    seg.postprocess = PostprocessConfig(object_mask_threshold=0.1, overlap_threshold=0.6)
    return seg


def _content(segmenter, size):
    scale = segmenter.backend.image_size / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@pytest.mark.parametrize("size", [(128, 128), (97, 128), (128, 40), (60, 61)])
def test_images_up_to_the_model_size_are_post_processed_at_full_resolution(segmenter, size):
    """The same labels as restoring the logits to the image and merging there (the behaviour before
    working sizes)."""
    from fisa_rt.postprocess import restore_mask_logits

    class_logits, mask_logits = _discs(torch.Generator().manual_seed(sum(size)), 20, CLASSES, 32, 32)
    S, content = segmenter.backend.image_size, _content(segmenter, size)
    logits = restore_mask_logits(mask_logits, (S, S), content, size)
    _, labels = _semantic_whole_image(class_logits, logits)
    is_thing = segmenter.vocabulary.is_thing
    segment_map, segments = _panoptic_whole_image(class_logits, logits, is_thing, segmenter.postprocess)
    result = segmenter._postprocess(np.zeros((*size, 3), np.uint8), class_logits, mask_logits, content, "panoptic")
    semantic = segmenter._postprocess(np.zeros((*size, 3), np.uint8), class_logits, mask_logits, content, "semantic")
    assert np.array_equal(semantic.semantic, labels.numpy())
    assert np.array_equal(result.semantic, _owner_classes(class_logits, logits, segmenter.postprocess).numpy())
    assert np.array_equal(result.panoptic.segment_map.numpy(), segment_map.numpy())
    assert [(s.id, s.category_id, s.score, s.area) for s in result.panoptic.segments] == segments and len(segments) >= 2


@pytest.mark.parametrize("threshold", [0.1, 1.0])
def test_the_panoptic_task_does_no_class_by_pixel_product(segmenter, threshold, monkeypatch):
    """Issue 19: post-processing flat in K. Whether proposals are kept (0.1) or none is (1.0: its labels are then
    each pixel's best proposal's class), the panoptic merge runs no matrix product, so nothing of (Q, K) x
    (Q, pixels) size; the semantic task does."""
    import dataclasses

    from torch.utils._python_dispatch import TorchDispatchMode

    from fisa_rt.postprocess import restore_mask_logits

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(segmenter, "postprocess",
                        dataclasses.replace(segmenter.postprocess, object_mask_threshold=threshold))
    class_logits, mask_logits = _discs(torch.Generator().manual_seed(3), 20, CLASSES, 32, 32)
    size = (128, 128)
    content = _content(segmenter, size)
    picture = np.zeros((*size, 3), np.uint8)
    products = {"mm", "bmm", "addmm", "baddbmm", "matmul", "einsum"}
    for task, multiplies in (("panoptic", False), ("semantic", True)):
        with Ops() as ops:
            result = segmenter._postprocess(picture, class_logits, mask_logits, content, task)
        assert bool(ops.names & products) == multiplies, (task, sorted(ops.names & products))
        if task == "panoptic":
            assert bool(result.panoptic.segments) == (threshold < 1.0)
            if threshold == 1.0:
                logits = restore_mask_logits(mask_logits, (128, 128), content, size)
                assert np.array_equal(result.semantic, best_proposal_labels(class_logits, logits).numpy())


@pytest.mark.parametrize("threshold", [None, 1.0])
def test_larger_images_are_merged_at_the_model_size_and_resized(segmenter, threshold, monkeypatch):
    """Threshold 1.0 keeps no proposal: the panoptic labels are then `best_proposal_labels`' and no segment."""
    import dataclasses

    from fisa_rt.postprocess import resize_labels

    if threshold is not None:
        monkeypatch.setattr(segmenter, "postprocess",
                            dataclasses.replace(segmenter.postprocess, object_mask_threshold=threshold))
    class_logits, mask_logits = _discs(torch.Generator().manual_seed(0), 20, CLASSES, 32, 32)
    size = (300, 500)
    content = _content(segmenter, size)
    assert content == (77, 128)
    result = segmenter._postprocess(np.zeros((*size, 3), np.uint8), class_logits, mask_logits, content, "panoptic")
    working = segmenter._postprocess(np.zeros((*content, 3), np.uint8), class_logits, mask_logits, content, "panoptic")
    assert result.semantic.shape == size and result.panoptic.segment_map.shape == size
    assert np.array_equal(result.semantic, resize_labels(torch.from_numpy(working.semantic), size).numpy())
    assert torch.equal(result.panoptic.segment_map, resize_labels(working.panoptic.segment_map, size))
    ids, counts = np.unique(result.panoptic.segment_map.numpy(), return_counts=True)
    assert {s.id: s.area for s in result.panoptic.segments} == {int(i): int(c) for i, c in zip(ids, counts) if i}
    segments = len(result.panoptic.segments)
    assert segments >= 2 if threshold is None else segments == 0
    assert len(np.unique(result.semantic)) >= 2 and result.semantic.dtype == np.int64
    assert result.panoptic.segment_map.dtype == torch.int32
    picture = np.zeros((*size, 3), np.uint8)
    instances = segmenter._postprocess(picture, class_logits, mask_logits, content, "instance").instances
    assert instances.masks.shape[1:] == size


def test_post_processing_memory_does_not_grow_with_proposals_or_classes_times_pixels(segmenter):
    """No tensor made while post-processing a 1000 x 1500 image holds Q x H x W or K x H x W values
    (Q = 20 proposals, K = 60 classes): the largest is the label map of the image itself."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    LargestTensor.numel = max(LargestTensor.numel, t.numel())
            return out

    class_logits, mask_logits = _discs(torch.Generator().manual_seed(0), 20, CLASSES, 32, 32)
    size = (1000, 1500)
    with LargestTensor():
        picture, content = np.zeros((*size, 3), np.uint8), _content(segmenter, size)
        result = segmenter._postprocess(picture, class_logits, mask_logits, content, "panoptic")
    assert result.panoptic.segment_map.shape == size and len(result.panoptic.segments) >= 2
    assert LargestTensor.numel <= size[0] * size[1]


@pytest.mark.parametrize("side, canvas", [(32, 128), (40, 160), (7, 21), (25, 128), (33, 128)])
@pytest.mark.parametrize("fraction", [(1, 1), (9, 16), (16, 9), (1, 128), (128, 1)])
def test_restore_interpolates_the_content_only_with_the_same_values(side, canvas, fraction):
    """Upsampling only the source rows/columns the content reads gives the bits of upsampling the whole
    canvas and cropping (integer ratios 4, 4, 3; non-integer 128 / 25 and 128 / 33 take the whole canvas)."""
    from fisa_rt.postprocess import restore_mask_logits

    logits = torch.randn(3, side, side, generator=torch.Generator().manual_seed(side))
    content = (max(1, canvas * fraction[0] // max(fraction)), max(1, canvas * fraction[1] // max(fraction)))
    whole = resize_mask_logits(logits, (canvas, canvas))[:, : content[0], : content[1]]
    assert torch.equal(restore_mask_logits(logits, (canvas, canvas), content, content), whole)


def test_small_cpu_merges_run_on_one_thread_and_restore_the_count():
    from fisa_rt.postprocess import SINGLE_THREAD_WORK, cpu_threads_for

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with cpu_threads_for(SINGLE_THREAD_WORK - 1, torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cpu_threads_for(SINGLE_THREAD_WORK, torch.device("cpu")):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), cpu_threads_for(1, torch.device("cpu")):
            raise RuntimeError("an error inside still restores the count")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_copy_packs_mixed_dtypes_and_unpacks_them_exactly():
    """to_host's packing (one flat byte buffer, widest elements first so each view stays aligned)."""
    from fisa_rt.postprocess import pack_bytes, unpack_bytes

    tensors = [torch.arange(7, dtype=torch.int32).reshape(1, 7), torch.tensor([True, False, True]),
               torch.randn(2, 3), torch.tensor([2**40, -3]), torch.zeros(0, dtype=torch.int64)]
    packed = pack_bytes(tensors)
    assert packed.dtype == torch.uint8 and packed.numel() == 28 + 3 + 24 + 16
    for array, tensor in zip(unpack_bytes(packed, tensors), tensors):
        assert array.dtype == tensor.numpy().dtype and np.array_equal(array, tensor.numpy())


@pytest.mark.parametrize("size", [(96, 144), (250, 61), (24, 36)])
def test_areas_counted_on_the_small_map_equal_those_of_the_resized_map(size):
    """Counted as integers (scatter_add), which torch.use_deterministic_algorithms allows on a GPU where bincount
    with weights raises; exact either way."""
    labels = torch.randint(0, 5, (24, 36), generator=torch.Generator().manual_seed(0))
    want = torch.bincount(resize_labels(labels, size).flatten(), minlength=7)
    torch.use_deterministic_algorithms(True)
    try:
        got = resized_areas(labels, size, 7)
    finally:
        torch.use_deterministic_algorithms(False)
    assert got.dtype == torch.int64 and torch.equal(got, want) and int(got.sum()) == size[0] * size[1]
