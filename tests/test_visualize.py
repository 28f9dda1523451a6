import numpy as np
import pytest

from fisa_rt import visualize


def _overlay_whole_image(image, segment_map, segment_classes, colours, alpha):
    """The blend as written before bands: a float copy of the whole image, one mask per segment."""
    out = image.astype(np.float32).copy()
    edges = np.zeros(segment_map.shape, bool)
    edges[1:] |= segment_map[1:] != segment_map[:-1]
    edges[:, 1:] |= segment_map[:, 1:] != segment_map[:, :-1]
    for segment, cls in segment_classes.items():
        mask = segment_map == segment
        out[mask] = (1 - alpha) * out[mask] + alpha * colours[cls]
    out[edges] = 255
    return out.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("band_rows", [1, 3, 256])
def test_banded_blend_equals_the_whole_image_blend(monkeypatch, band_rows):
    monkeypatch.setattr(visualize, "BAND_ROWS", band_rows)
    rng = np.random.default_rng(band_rows)
    image = rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)
    segment_map = np.repeat(np.repeat(rng.integers(0, 6, (6, 5)), 4, 0), 4, 1)[:23, :17].astype(np.int32)
    segment_classes = {1: 0, 2: 2, 4: 2, 5: 1}  # 3 is in the map but not listed: left as it is
    names = ["a", "b", "c"]
    expected = _overlay_whole_image(image, segment_map, segment_classes, visualize.class_colours(3), 0.55)
    picture = np.asarray(visualize.overlay(image, segment_map, segment_classes, names))
    assert np.array_equal(picture[:23, :17], expected)


def test_blend_with_more_segments_than_a_16_bit_table_index_holds():
    """Above 256 painted segments the blend's table index no longer fits 16 bits (visualize._blend)."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    segment_map = rng.integers(0, 400, (40, 50)).astype(np.int32)
    segment_classes = {s: s % 7 for s in range(1, 400, 1)}
    names = [str(k) for k in range(7)]
    expected = _overlay_whole_image(image, segment_map, segment_classes, visualize.class_colours(7), 0.55)
    picture = np.asarray(visualize.overlay(image, segment_map, segment_classes, names))
    assert np.array_equal(picture[:40, :50], expected)
