"""The runtime whatever torch state its caller is in: autocast, inference_mode, a default dtype or device, and
several threads. Each test failed before its fix (a helper's sweep, docs/design.md "The caller's torch state")."""

import threading

import numpy as np
import pytest
import torch

from fisa_rt.checkpoint import load_model
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.backends import TorchBackend
from fisa_rt.runtime.images import load_image
from fisa_rt.runtime.segmenter import Segmenter

from helpers import random_text
from test_cuda_graphs import ReplaySeam

CLASSES = ["red star", "blue circle", "wavy wall:stuff"]


def segmenter(**backend_options):
    seg = Segmenter(TorchBackend(default_checkpoint(), "cpu", **backend_options), default_checkpoint(), cache_dir="")
    seg.set_vocabulary(CLASSES)
    return seg


@pytest.fixture(scope="module")
def plain():
    return segmenter(cuda_graphs=False)


@pytest.fixture(scope="module")
def image():
    return load_image(sample_images()[0])


def assert_same(got, want):
    assert np.array_equal(got.semantic, want.semantic)
    if want.panoptic is not None:
        assert torch.equal(got.panoptic.segment_map, want.panoptic.segment_map)
    if want.instances is not None:
        assert torch.equal(got.instances.masks, want.instances.masks)
        assert torch.equal(got.instances.labels, want.instances.labels)


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_a_callers_autocast_does_not_reach_the_segmenter(plain, image, task):
    """Semantic and instance post-processing failed under a bf16 autocast ("Expected out tensor to have dtype
    BFloat16"), and panoptic ran the model in bf16."""
    want = plain.segment(image, task)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = plain.segment(image, task)
    assert_same(got, want)


def test_a_vocabulary_set_under_autocast_is_encoded_in_float32(plain):
    """Its embeddings were bf16-quality (1e-3 off) and went to the disk cache so."""
    seg = segmenter(cuda_graphs=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seg.set_vocabulary(CLASSES)
    assert np.array_equal(seg.text, plain.text)


def test_a_segmenter_made_under_a_float64_default_dtype(plain, image):
    """Its normalisation buffers took the default dtype: every later image was refused as "not of the weights'
    type"."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        seg = segmenter(cuda_graphs=False)
    finally:
        torch.set_default_dtype(before)
    assert_same(seg.segment(image), plain.segment(image))


def test_weights_made_under_inference_mode_run_at_another_grid():
    """The position table's cache read the weights' version counter, which inference tensors lack: a model made
    under inference_mode failed at any grid but CLIP's (fisa-vit-b16: always), inside inference_mode or not."""
    model, _ = load_model(default_checkpoint())
    with torch.inference_mode():
        made_inside, _ = load_model(default_checkpoint())
        backend = TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False)
    images, text = torch.randn(1, 3, 160, 160), random_text(3, model.embed_dim)
    with torch.no_grad():
        want = model(images, text).class_logits
        torch.testing.assert_close(made_inside(images, text).class_logits, want, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(made_inside(images, text).class_logits, want, rtol=0, atol=0)
    # the backend's weights are normal tensors, so its table is kept
    assert not backend.model.backbone.visual.positional_embedding.is_inference()


class OnTheGpu:
    """A token tensor as open_clip's tokenizer returns it under torch.set_default_device("cuda"): NumPy cannot
    read it, ``.cpu()`` can (no GPU here, so its refusal is imitated)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def cpu(self):
        return self.tokens

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor")


def test_a_vocabulary_set_under_another_default_device(plain):
    """open_clip's tokenizer makes its tokens on torch's default device, which may be a GPU."""
    class Tokenizer:  # open_clip's, whose call returns tokens "on the GPU"
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

        def __call__(self, prompts):
            return OnTheGpu(self.tokenizer(prompts))

    seg = segmenter(cuda_graphs=False)
    seg.text_encoder.tokenizer = Tokenizer(seg.text_encoder.tokenizer)
    seg.set_vocabulary(CLASSES)
    assert np.array_equal(seg.text, plain.text)


def test_two_threads_on_one_graph_runner_each_get_their_own_scores(plain):
    """Both threads filled and replayed the same static buffers: some calls returned the other's scores."""
    backend = TorchBackend(default_checkpoint(), "cpu", graph_seam=ReplaySeam())
    text = plain.text
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=generator) for _ in range(2)]
    expected = [plain.backend.run(x, text).class_scores for x in images]
    wrong = []

    def work(index):
        for _ in range(10):
            got = backend.run(images[index], text).class_scores
            if not torch.allclose(got, expected[index], rtol=1e-4, atol=1e-6):
                wrong.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong and backend.graphs.captures == 1
