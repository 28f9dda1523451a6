"""resize.pad "divisible": FC-CLIP's padding. FC-CLIP batches test images with detectron2's
``ImageList.from_tensors(images, size_divisibility=32)`` (fcclip/fcclip.py, detectron2/structures/image_list.py):
each normalised image is padded with 0, bottom and right, to the batch's largest height and width rounded up
to 32, not to a fixed square. The PyTorch backend does the same; exported graphs keep the S x S canvas."""

import dataclasses
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fisa_rt.checkpoint import save_checkpoint
from fisa_rt.config import ConfigError, FisaConfig, get_model_config
from fisa_rt.data.panoptic import PanopticDataset
from fisa_rt.evaluation import evaluate, evaluate_segmenter
from fisa_rt.model import create_model
from fisa_rt.postprocess import panoptic_inference, restore_mask_logits, semantic_inference
from fisa_rt.preprocess import padded_canvas, resized_shape
from fisa_rt.runtime.backends import Backend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend
from fisa_rt.runtime.segmenter import Segmenter

from helpers import random_text

NAMES, THINGS = ["cat", "grass", "sky", "dog"], [True, False, False, True]


def fcclip_tiny(pad: str = "divisible") -> FisaConfig:
    """fcclip-convnext-l at reduced widths (ConvNeXt-atto CLIP, small decoders), its resize rule scaled to a
    128 canvas: short side 64, long side at most 128."""
    base, tiny = get_model_config("fcclip-convnext-l"), get_model_config("fisa-tiny-convnext")
    generator = dataclasses.replace(
        base.mask_generator, hidden_dim=32, num_queries=8, dec_layers=2, enc_layers=1, num_heads=4,
        dim_feedforward=64, mask_dim=32, deformable_ffn=64,
    )
    resize = dataclasses.replace(base.resize, short=64, max_size=128, pad=pad)
    return dataclasses.replace(base, name="fcclip-tiny", image_size=128, clip=tiny.clip, mask_generator=generator,
                               resize=resize)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(fcclip_tiny()).eval()
    with torch.no_grad():  # random but not degenerate proposals
        for p in model.mask_generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = str(tmp_path_factory.mktemp("pad") / "fcclip-tiny.safetensors")
    save_checkpoint(path, model, vocabulary=["cat", "grass"], is_thing=[True, False])
    return path


@pytest.fixture
def segmenter(checkpoint):
    seg = Segmenter.from_engine(checkpoint, device="cpu", cache_dir="")
    seg.set_vocabulary(NAMES, random_text(len(NAMES), seg.backend.embed_dim).numpy())
    seg.fed = []  # every batch the backend runs
    run = seg.backend.run
    seg.backend.run = lambda images, *args: (seg.fed.append(images), run(images, *args))[1]
    return seg


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_padded_canvas_is_image_list_from_tensors():
    rule = get_model_config("fcclip-convnext-l").resize
    photo = resized_shape(480, 640, 1344, rule)  # 800 x 1067 (detectron2 ResizeShortestEdge 800/1333)
    assert padded_canvas([photo], 1344, 32) == (800, 1088)
    assert padded_canvas([photo, resized_shape(720, 1280, 1344, rule)], 1344, 32) == (800, 1344)  # 750 x 1333
    assert padded_canvas([(64, 64), (33, 1)], 128, 32) == (64, 64)  # already multiples: no padding
    assert padded_canvas([photo], 1344) == (1344, 1344)  # no divisibility: the square


def test_torch_backend_takes_a_variable_canvas_only_when_the_config_asks(checkpoint, tmp_path):
    assert TorchBackend(checkpoint, "cpu").variable_canvas
    path = str(tmp_path / "canvas.safetensors")
    save_checkpoint(path, create_model(fcclip_tiny("canvas")))
    assert not TorchBackend(path, "cpu").variable_canvas
    assert not Backend.variable_canvas and not OnnxRuntimeBackend.variable_canvas
    assert not TensorRTBackend.variable_canvas


def test_the_canvas_is_the_resized_image_rounded_up_to_32(segmenter):
    result = segmenter.segment(picture(50, 70), "panoptic")
    # 50 x 70 -> short side 64: 64 x 89.6 -> 64 x 90 (detectron2 rounds half up), padded to 64 x 96, not 128 x 128
    (batch,) = segmenter.fed
    assert batch.shape == (1, 3, 64, 96) and batch.dtype == torch.float32
    mean = torch.tensor(segmenter.image_mean).view(3, 1, 1) * 255.0
    assert torch.equal(batch[0, :, :, 90:], mean.expand(3, 64, 6))  # exactly 0 once normalised
    assert result.semantic.shape == (50, 70) and result.panoptic.segment_map.shape == (50, 70)


def test_segmenter_equals_the_model_on_detectron2_padding(segmenter, checkpoint):
    """The Segmenter's result is the model's own on the tensor FC-CLIP would feed it, built here directly:
    the resized image normalised, then padded with 0 to multiples of 32 (ImageList.from_tensors)."""
    image = picture(50, 70, seed=1)
    result = segmenter.segment(image, "panoptic")

    from fisa_rt.checkpoint import load_model

    model, _ = load_model(checkpoint)
    model.eval()
    cfg = model.cfg
    # detectron2 resizes a uint8 image in uint8 (Pillow); so does the Segmenter on CPU (torch's uint8 kernel,
    # Pillow's to within one level: tests/test_preprocess.py)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=(64, 90), mode="bilinear", align_corners=False, antialias=True).float()
    mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1) * 255.0
    normalised = (resized - mean) / std
    padded = F.pad(normalised, (0, 96 - 90, 0, 64 - 64), value=0.0)  # detectron2: bottom/right, value 0
    seen = torch.tensor(segmenter.seen_in_training)
    with torch.no_grad():
        out = model(padded, torch.tensor(segmenter.text), seen=seen)
    logits = restore_mask_logits(out.mask_logits[0], (64, 96), (64, 90), (50, 70))
    semantic = semantic_inference(out.class_logits[0], logits).label_map
    panoptic = panoptic_inference(out.class_logits[0], logits, THINGS, segmenter.postprocess)
    assert np.array_equal(segmenter.segment(image, "semantic").semantic, semantic.numpy())
    assert np.array_equal(result.panoptic.segment_map, panoptic.segment_map.numpy())
    assert [s.category_id for s in result.panoptic.segments] == [s.category_id for s in panoptic.segments]
    # and the model saw exactly that tensor (the Segmenter normalises inside the backend)
    fed = (segmenter.fed[0] - mean) / std
    assert torch.equal(fed, padded)


def test_a_batch_pads_to_its_largest_image(segmenter):
    # 50 x 70 -> 64 x 90; 40 x 100 -> 64 x 160, over 128 -> 51.2 x 128 -> 51 x 128: canvas 64 x 128
    results = segmenter.segment_batch([picture(50, 70), picture(40, 100, seed=2)], "semantic")
    (batch,) = segmenter.fed
    assert batch.shape == (2, 3, 64, 128)
    mean = torch.tensor(segmenter.image_mean).view(3, 1, 1) * 255.0
    assert torch.equal(batch[0, :, :, 90:], mean.expand(3, 64, 38))
    assert torch.equal(batch[1, :, 51:], mean.expand(3, 13, 128))
    assert [r.semantic.shape for r in results] == [(50, 70), (40, 100)]


def test_fixed_canvas_backends_keep_the_square(checkpoint):
    """A backend without a variable canvas (ONNX Runtime, TensorRT: static S x S graphs) gets the S x S
    canvas, whatever resize.pad says, and uint8 pixels as before."""
    segmenter = Segmenter.from_engine(checkpoint, device="cpu", cache_dir="")
    assert segmenter.resize.pad == "divisible"
    segmenter.backend = types.SimpleNamespace(
        image_size=128, device=torch.device("cpu"), variable_canvas=OnnxRuntimeBackend.variable_canvas
    )
    canvas, content = segmenter._canvas(picture(50, 70))
    assert canvas.shape == (1, 3, 128, 128) and canvas.dtype == torch.uint8 and content == (64, 90)
    assert segmenter._canvas_size([picture(50, 70), picture(40, 100)]) == (128, 128)


def test_evaluation_pads_as_the_segmenter(checkpoint, synthetic_data):
    """`fisa-rt eval` (evaluate for a .safetensors, evaluate_segmenter for any backend) crops the dataset's
    square canvas to FC-CLIP's: the 64 x 64 scenes resize to 64 x 64, padded to nothing; a rule with a short
    side of 40 gives 40 x 40, padded to 64 x 64, the padding exactly 0 once normalised."""
    from fisa_rt.checkpoint import load_model

    model, _ = load_model(checkpoint)
    rule = dataclasses.replace(model.cfg.resize, short=40, max_size=60)
    model.cfg = dataclasses.replace(model.cfg, resize=rule)
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    dataset = PanopticDataset(synthetic_data, "val", 128, augment=False, resize=rule, image_mean=model.cfg.image_mean)
    evaluate(model, dataset, batch_size=2, limit=2)
    hook.remove()
    assert [tuple(x.shape) for x in seen] == [(2, 3, 64, 64)]
    assert not seen[0][..., 40:, :].any() and not seen[0][..., :, 40:].any()

    segmenter = Segmenter.from_engine(checkpoint, device="cpu", cache_dir="")
    segmenter.resize = rule
    fed = []
    run = segmenter.backend.run
    segmenter.backend.run = lambda images, *args: (fed.append(images), run(images, *args))[1]
    evaluate_segmenter(segmenter, dataset, batch_size=2, limit=2)
    assert [tuple(x.shape) for x in fed] == [(2, 3, 64, 64)]
    normalised = (fed[0] - torch.tensor(model.cfg.image_mean).view(3, 1, 1) * 255.0)
    assert not normalised[..., 40:, :].any() and not normalised[..., :, 40:].any()


def test_bad_pad_values_are_refused_in_one_line():
    data = fcclip_tiny().to_dict()
    with pytest.raises(ConfigError, match=r"resize.pad must be one of \('canvas', 'divisible'\), got 'square'") as err:
        FisaConfig.from_dict({**data, "resize": {**data["resize"], "pad": "square"}})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="multiple of 32"):
        FisaConfig.from_dict({**data, "resize": {**data["resize"], "divisible": 16}})


def test_vit_configs_keep_the_square_canvas():
    cfg = get_model_config("fisa-tiny")
    with pytest.raises(ConfigError, match="needs a ConvNeXt CLIP"):
        create_model(dataclasses.replace(cfg, resize=dataclasses.replace(cfg.resize, pad="divisible")))


def test_shipped_fcclip_configs_pad_as_fcclip():
    assert get_model_config("fcclip-convnext-l").resize.pad == "divisible"
    assert get_model_config("fisa-fcclip-convnext-l").resize.pad == "divisible"
    for name in ("fisa-tiny", "fisa-tiny-convnext", "fisa-convnext-l", "fisa-vit-b16"):
        assert get_model_config(name).resize.pad == "canvas"
