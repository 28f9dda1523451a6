"""The inference resize rule: fisa-rt's longest-edge rule, and detectron2's ResizeShortestEdge as FC-CLIP
tests with it (MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333, size_divisibility 32)."""

import dataclasses
import types

import numpy as np
import pytest
import torch
from PIL import Image

from fisa_rt.checkpoint import save_checkpoint
from fisa_rt.config import OPENAI_MEAN, OPENAI_STD, ConfigError, FisaConfig, ResizeConfig, get_model_config
from fisa_rt.data.panoptic import PanopticDataset
from fisa_rt.model import create_model
from fisa_rt.preprocess import normalize_images, resize_and_pad, resized_shape
from fisa_rt.runtime.segmenter import Segmenter

FCCLIP_TEST = ResizeConfig(
    mode="shortest_edge", short=800, max_size=1333, divisible=32, pad_mean=True, pad="divisible"
)


# Expected sizes worked out by hand from detectron2's ResizeShortestEdge.get_output_shape
# (detectron2/data/transforms/augmentation_impl.py): scale = 800 / short side; if the long side then
# exceeds 1333, scale both down so it equals 1333; each side int(x + 0.5).
@pytest.mark.parametrize(
    "size, expected",
    [
        ((480, 640), (800, 1067)),  # 4:3 landscape: 640 * 800 / 480 = 1066.67
        ((640, 480), (1067, 800)),  # the same, portrait
        ((427, 640), (800, 1199)),  # COCO's most common size: 640 * 800 / 427 = 1199.06
        ((333, 500), (800, 1201)),  # 500 * 800 / 333 = 1201.2
        ((1000, 1000), (800, 800)),  # square, scaled down
        ((128, 96), (1067, 800)),  # small portrait, scaled up
        ((720, 1280), (750, 1333)),  # 16:9: 1422.2 > 1333, so 800 * 1333 / 1422.2 = 749.8
        ((375, 1242), (402, 1333)),  # very wide: 2649.6 > 1333, 800 * 1333 / 2649.6 = 402.5 -> 402
        ((1, 2000), (1, 1333)),  # a line of pixels keeps one row
        ((64, 65), (800, 813)),  # 65 * 12.5 = 812.5 exactly: int(x + 0.5) rounds up, Python's round to even
        ((65, 64), (813, 800)),
    ],
)
def test_shortest_edge_is_detectron2s_rule(size, expected):
    assert resized_shape(*size, 1344, FCCLIP_TEST) == expected


def test_normalisation_is_per_channel_mean_and_std_of_the_0_to_1_scale():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)  # one pixel: 0, 0.2, 1.0
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    want = torch.tensor([(0.0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (1.0 - 0.3) / 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize_images(pixels, mean, std), want)
    torch.testing.assert_close(normalize_images(pixels.float() / 255, mean, std), want)  # float input in [0, 1]


@pytest.mark.parametrize(
    "size, expected",
    [((480, 640), (816, 1088)), ((1088, 17), (1088, 17)), ((3, 4000), (1, 1088)),
     ((2, 7), (311, 1088))],  # 2 * 1088 / 7 = 310.86: rounded, not floored
)
def test_longest_edge_rule_is_the_default(size, expected):
    assert resized_shape(*size, 1088) == expected
    assert resized_shape(*size, 1088, ResizeConfig()) == expected


def test_fcclip_config_resizes_as_fcclip_tests():
    cfg = get_model_config("fcclip-convnext-l")
    assert cfg.resize == FCCLIP_TEST
    assert cfg.image_size == FCCLIP_TEST.canvas() == 1344  # 1333 padded to a multiple of 32
    assert cfg.to_dict()["resize"]["mode"] == "shortest_edge"  # what build_engine writes into the manifest
    for other in ("fisa-tiny", "fisa-convnext-l"):
        assert get_model_config(other).resize == ResizeConfig()


def test_resize_rules_that_cannot_fit_are_refused():
    data = get_model_config("fcclip-convnext-l").to_dict()
    with pytest.raises(ConfigError, match="image_size 1088 cannot hold.*use image_size 1344"):
        FisaConfig.from_dict({**data, "image_size": 1088})
    with pytest.raises(ConfigError, match="resize.mode"):
        FisaConfig.from_dict({**data, "resize": {"mode": "stretch"}})
    with pytest.raises(ConfigError, match="short <= max_size"):
        FisaConfig.from_dict({**data, "resize": {**data["resize"], "short": 1400}})


def _segmenter(image_size: int, resize: ResizeConfig) -> Segmenter:
    segmenter = Segmenter.__new__(Segmenter)  # only the pre-processing: no artefact needed
    segmenter.backend = types.SimpleNamespace(
        image_size=image_size, device=torch.device("cpu"), variable_canvas=False
    )
    segmenter.resize = resize
    segmenter.pad_colour = resize.pad_colour(OPENAI_MEAN)
    return segmenter


def test_segmenter_canvas_follows_the_rule():
    picture = np.full((48, 64, 3), 200, np.uint8)
    rule = ResizeConfig(mode="shortest_edge", short=60, max_size=90, divisible=32)  # canvas 96
    canvas, content = _segmenter(96, rule)._canvas(picture)
    assert content == (60, 80) and canvas.shape == (1, 3, 96, 96)
    assert (canvas[0, :, :60, :80] == 200).all() and not canvas[0, :, 60:].any() and not canvas[0, :, :, 80:].any()
    canvas, content = _segmenter(96, ResizeConfig())._canvas(picture)
    assert content == (72, 96)
    canvas, _ = _segmenter(96, dataclasses.replace(rule, pad_mean=True))._canvas(picture)
    assert canvas[0, :, 95, 95].tolist() == [123, 117, 104]  # FC-CLIP pads with the mean: ~0 once normalised
    normalised = (canvas[0, :, 95, 95].float() / 255 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert normalised.abs().max() < 0.01


def test_segmenter_reads_the_rule_from_the_checkpoint(tmp_path):
    rule = ResizeConfig(mode="shortest_edge", short=40, max_size=60, divisible=32)  # canvas 64
    cfg = dataclasses.replace(get_model_config("fisa-tiny"), image_size=64, resize=rule)
    path = str(tmp_path / "tiny.safetensors")
    save_checkpoint(path, create_model(cfg).eval(), vocabulary=["cat", "grass"], is_thing=[True, False])
    segmenter = Segmenter.from_engine(path, device="cpu")
    assert segmenter.resize == rule
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert segmenter._canvas(picture)[1] == (40, 53)  # 64 * 40 / 48 = 53.3
    result = segmenter.segment(picture, "panoptic")
    assert result.semantic.shape == (48, 64)


def test_evaluation_samples_follow_the_rule(synthetic_data):
    rule = ResizeConfig(mode="shortest_edge", short=40, max_size=60, divisible=32)  # canvas 64
    sample = PanopticDataset(synthetic_data, "val", 64, augment=False, resize=rule)[0]
    assert sample.size == (40, 40) and int(sample.valid.sum()) == 40 * 40
    assert sample.image.shape == (3, 64, 64) and not sample.image[:, 40:].any()
    mean_padded = dataclasses.replace(rule, pad_mean=True)
    padded = PanopticDataset(synthetic_data, "val", 64, augment=False, resize=mean_padded)[0]
    assert padded.image[:, 50, 50].tolist() == [123, 117, 104]
    assert torch.equal(padded.image[:, :40, :40], sample.image[:, :40, :40])


@pytest.mark.parametrize("size, target", [((50, 70), (32, 45)), ((37, 41), (128, 100)), ((480, 640), (96, 128)),
                                          ((7, 300), (3, 128)), ((64, 64), (64, 64))])
def test_cpu_resize_is_pillows_the_resize_training_saw(size, target):
    """On CPU the resize runs in uint8: Pillow's BILINEAR (the training data's and detectron2's resize) to
    within one level on under 1 % of values (the float path it replaced differed on 8-18 %); an image already
    at its size is copied unchanged; the padding is the given colour."""
    picture = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    canvas = (target[0] + 3, target[1] + 5)
    out = resize_and_pad(torch.from_numpy(picture).permute(2, 0, 1), target, canvas, (1, 2, 3))
    assert out.shape == (3, *canvas) and out.dtype == torch.uint8
    pillow = np.asarray(Image.fromarray(picture).resize(target[::-1], Image.BILINEAR)).transpose(2, 0, 1)
    differs = out[:, : target[0], : target[1]].numpy().astype(int) - pillow
    assert np.abs(differs).max() <= 1 and (differs != 0).mean() < 0.01
    if size == target:
        assert not differs.any()
    assert (out[:, target[0]:] == torch.tensor([1, 2, 3]).view(3, 1, 1)).all()
    assert (out[:, :, target[1]:] == torch.tensor([1, 2, 3]).view(3, 1, 1)).all()


def test_cpu_preprocessing_runs_on_one_thread():
    """A photo's pre-processing is a few ms of work on one core; a second torch thread would cost each of its
    small ops a scheduler slice whenever the other core is busy (docs/design.md)."""
    segmenter = _segmenter(96, ResizeConfig())
    seen, canvas = [], segmenter._canvas
    segmenter._canvas = lambda *a: seen.append(torch.get_num_threads()) or canvas(*a)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        prepared = segmenter.prepare([np.zeros((1080, 1920, 3), np.uint8)])
        assert seen == [1] and torch.get_num_threads() == 2
        assert prepared.batch.shape == (1, 3, 96, 96) and prepared.contents == [(54, 96)]
    finally:
        torch.set_num_threads(before)
