"""The CUDA-graph runner (fisa_rt/runtime/cuda_graphs.py) on CPU, through its capture/replay seam: a
"capture" records the function and its output buffers, a "replay" reruns it into those buffers, so static
buffers, bucket choice, refill without recapture, padded-class masking and the fallback are all exercised."""

import warnings

import numpy as np
import pytest
import torch

from fisa_rt.errors import FisaWarning, InputError
from fisa_rt.model import create_model
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.images import load_image
from fisa_rt.runtime.backends import TorchBackend
from fisa_rt.runtime import cuda_graphs
from fisa_rt.runtime.cuda_graphs import MIN_BUCKET, CaptureSeam, class_bucket
from fisa_rt.runtime.segmenter import Segmenter

from helpers import open_gates, random_text


class ReplaySeam(CaptureSeam):
    """Counts warm-ups, captures and replays; a replay writes the function's outputs into the captured ones."""

    def __init__(self, fail: str = ""):
        self.fail, self.warmups, self.captures, self.replays = fail, 0, 0, 0

    def warm_up(self, fn):
        self.warmups += 1
        fn()

    def capture(self, fn):
        if self.fail:
            raise RuntimeError(self.fail)
        self.captures += 1
        outputs = fn()
        return (fn, outputs), outputs

    def replay(self, handle):
        self.replays += 1
        fn, outputs = handle
        for static, fresh in zip(outputs, fn()):
            static.copy_(fresh)


@pytest.fixture(scope="module")
def eager():
    return TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False)


def graphed(seam):
    return TorchBackend(default_checkpoint(), "cpu", graph_seam=seam)


def _inputs(backend, classes, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, 128, 128), dtype=torch.uint8, generator=generator)
    text = random_text(classes, backend.embed_dim).numpy()
    return images, text


def test_buckets_are_powers_of_two_from_the_minimum():
    assert [class_bucket(k) for k in (1, 8, 9, 16, 17, 133, 1203)] == [MIN_BUCKET, 8, 16, 16, 32, 256, 2048]
    with pytest.raises(ValueError, match="at least one class"):
        class_bucket(0)


def test_padded_classes_are_masked_so_scores_equal_the_unpadded_run(eager):
    seam = ReplaySeam()
    backend = graphed(seam)
    for classes in (5, 13):  # padded to 8 and 16
        images, text = _inputs(eager, classes)
        want, got = eager.run(images, text), backend.run(images, text)
        assert got.class_scores.shape == want.class_scores.shape == (1, 20, classes + 1)
        torch.testing.assert_close(got.class_scores, want.class_scores, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.mask_logits, want.mask_logits, rtol=1e-4, atol=1e-4)
    assert seam.captures == 2


@pytest.mark.parametrize("config", ["fisa-tiny", "fisa-tiny-convnext"])  # mask-attention, mask-average heads
def test_text_valid_masks_padding_in_either_head(config):
    torch.manual_seed(0)
    model = create_model(config).eval()
    open_gates(model, 0.5)  # SEVE on: built fresh its gates are 0, and dropping text_valid there went unseen
    images, text = torch.randn(1, 3, 128, 128), random_text(5, model.embed_dim)
    seen = torch.tensor([True, False, True, False, False])
    padded = torch.cat([text, torch.zeros(3, model.embed_dim)])
    valid = torch.arange(8) < 5
    with torch.no_grad():
        want = model(images, text, seen=seen).class_logits.softmax(-1)
        got = model(images, padded, seen=torch.cat([seen, torch.zeros(3, dtype=torch.bool)]), text_valid=valid)
    scores = got.class_logits.softmax(-1)
    assert torch.equal(scores[..., 5:8], torch.zeros_like(scores[..., 5:8]))
    torch.testing.assert_close(torch.cat([scores[..., :5], scores[..., -1:]], -1), want, rtol=1e-4, atol=1e-6)


def test_a_vocabulary_of_the_same_bucket_refills_the_text_without_recapture(eager, monkeypatch):
    seam = ReplaySeam()
    backend = graphed(seam)
    images, _ = _inputs(eager, 1)
    for classes, seed in ((3, 0), (7, 1), (8, 2)):
        _, text = _inputs(eager, classes, seed=seed)
        torch.testing.assert_close(backend.run(images, text).class_scores, eager.run(images, text).class_scores,
                                   rtol=1e-4, atol=1e-6)
    assert (seam.captures, seam.replays) == (1, 3)
    backend.run(images, _inputs(eager, 9)[1])  # the next bucket
    backend.run(torch.cat([images, images]), _inputs(eager, 3)[1])  # another batch size
    assert seam.captures == 3 and len(backend.graphs.graphs) == 3
    monkeypatch.setattr(cuda_graphs, "MAX_GRAPHS", 3)  # past the cap a new shape runs eagerly, uncaptured
    backend.run(torch.cat([images] * 3), _inputs(eager, 3)[1])
    assert seam.captures == 3 and len(backend.graphs.graphs) == 3


def test_past_the_cap_a_graph_idle_for_long_makes_way_and_a_busy_one_does_not(eager, monkeypatch):
    monkeypatch.setattr(cuda_graphs, "MAX_GRAPHS", 2)
    monkeypatch.setattr(cuda_graphs, "IDLE_CALLS", 4)
    seam = ReplaySeam()
    backend = graphed(seam)
    one, text = _inputs(eager, 3)
    two, three = torch.cat([one] * 2), torch.cat([one] * 3)
    for images in (one, two, three, one, two, three):  # a cycle one shape wider than the cap: no thrash
        backend.run(images, text)
    assert seam.captures == 2 and backend.graphs.evictions == 0  # batch 1 last replayed at call 4
    backend.run(three, text)  # call 7: batch 1 unused for 3 calls, under IDLE_CALLS: eager
    assert seam.captures == 2 and backend.graphs.evictions == 0
    want = eager.run(three, text)
    got = backend.run(three, text)  # call 8: 4 calls, IDLE_CALLS: its place is taken
    assert seam.captures == 3 and backend.graphs.evictions == 1
    assert sorted(key[0][0] for key in backend.graphs.graphs) == [2, 3]
    torch.testing.assert_close(got.class_scores, want.class_scores, rtol=1e-4, atol=1e-6)
    replays = seam.replays
    backend.run(three, text)  # kept: replayed, not captured again
    assert (seam.captures, seam.replays) == (3, replays + 1)


def test_static_buffers_are_reused_and_results_are_not_overwritten(eager):
    backend = graphed(ReplaySeam())
    first_images, text = _inputs(eager, 4, seed=0)
    first = backend.run(first_images, text)
    (graph,) = backend.graphs.graphs.values()
    buffers = [graph.images.data_ptr(), graph.text.data_ptr(), *(o.data_ptr() for o in graph.outputs)]
    kept = first.mask_logits.clone()
    second_images, _ = _inputs(eager, 4, seed=1)
    second = backend.run(second_images, text)
    assert buffers == [graph.images.data_ptr(), graph.text.data_ptr(), *(o.data_ptr() for o in graph.outputs)]
    assert torch.equal(first.mask_logits, kept) and not torch.equal(first.mask_logits, second.mask_logits)
    assert torch.equal(graph.images, second_images)


def test_seen_flags_reach_the_graph(eager):
    backend = graphed(ReplaySeam())
    images, text = _inputs(eager, 3)
    backend.run(images, text, np.array([True, False, True]))
    (graph,) = backend.graphs.graphs.values()
    assert graph.seen.tolist() == [True, False, True] + [False] * 5 and graph.valid.sum() == 3


def _read_only(*arrays):
    for array in arrays:
        array.setflags(write=False)  # as Segmenter.set_vocabulary leaves its vocabulary
    return arrays


def test_a_kept_vocabulary_is_copied_and_filled_once(eager):
    """A read-only vocabulary (the Segmenter's) crosses to the device once and fills the graph's text, valid and
    seen buffers once; the images are copied at every call. Another vocabulary fills them again."""
    backend = graphed(ReplaySeam())
    images, text = _inputs(eager, 5)
    text, seen = _read_only(text, np.array([True, False, True, False, False]))
    backend.run(images, text, seen)
    (graph,) = backend.graphs.graphs.values()
    filled = (graph.text._version, graph.valid._version, graph.seen._version)
    device_text = backend.inputs.held["text"][1]
    for seed in (1, 2):
        later, _ = _inputs(eager, 5, seed=seed)
        got = backend.run(later, text, seen)
        torch.testing.assert_close(got.class_scores, eager.run(later, text, seen).class_scores, rtol=1e-4, atol=1e-6)
        assert torch.equal(graph.images, later)
    assert backend.inputs.held["text"][1] is device_text
    assert (graph.text._version, graph.valid._version, graph.seen._version) == filled
    _, other = _inputs(eager, 6, seed=3)
    other, other_seen = _read_only(other, np.zeros(6, bool))
    got = backend.run(images, other, other_seen)
    assert graph.text._version > filled[0] and graph.valid.sum() == 6 and not graph.seen.any()
    torch.testing.assert_close(got.class_scores, eager.run(images, other, other_seen).class_scores, rtol=1e-4,
                               atol=1e-6)


def test_a_vocabulary_that_may_have_changed_is_copied_again(eager):
    """A writable array is copied at every call, and a device tensor changed in place refills the buffers: the
    scores follow the new values."""
    backend = graphed(ReplaySeam())
    images, text = _inputs(eager, 4)
    _, replacement = _inputs(eager, 4, seed=1)
    backend.run(images, text)
    text[:] = replacement  # in place, same array
    torch.testing.assert_close(backend.run(images, text).class_scores, eager.run(images, replacement).class_scores,
                               rtol=1e-4, atol=1e-6)
    assert not backend.inputs.held
    runner, device_text = backend.graphs, torch.from_numpy(replacement.copy())
    with torch.no_grad():  # as TorchBackend.run calls it
        runner(images, device_text, None)
        (graph,) = runner.graphs.values()
        device_text.neg_()
        runner(images, device_text, None)
    assert torch.equal(graph.text[:4], device_text)


def test_graphs_run_under_inference_mode_and_then_without(eager):
    """Inference tensors keep no version count: one is never taken as unchanged, and the kept copy is a normal
    tensor. A graph captured under inference_mode has normal buffers, which a later call outside it fills in
    place (it failed: "Inplace update to inference tensor outside InferenceMode")."""
    backend = graphed(ReplaySeam())
    images, text = _inputs(eager, 4)
    (text,) = _read_only(text)
    with torch.inference_mode():
        first, second = backend.run(images, text), backend.run(images, text)
        runner, device_text = backend.graphs, torch.from_numpy(text.copy())
        runner(images, device_text, None)
        runner(images, device_text, None)
    assert torch.equal(first.class_scores, second.class_scores)
    assert not backend.inputs.held["text"][1].is_inference()
    later, _ = _inputs(eager, 4, seed=1)
    torch.testing.assert_close(backend.run(later, text).class_scores, eager.run(later, text).class_scores, rtol=1e-4,
                               atol=1e-6)
    assert backend.graphs.captures == 1


def test_a_failed_capture_falls_back_with_one_line(eager):
    seam = ReplaySeam(fail="operation not permitted when stream is capturing")
    backend = graphed(seam)
    images, text = _inputs(eager, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = backend.run(images, text)
        backend.run(images, text)  # no second attempt, no second line
    lines = [str(w.message) for w in caught if issubclass(w.category, FisaWarning)]
    assert len(lines) == 1 and "CUDA graphs are off" in lines[0] and "stream is capturing" in lines[0]
    assert "\n" not in lines[0] and seam.warmups == 1
    torch.testing.assert_close(got.class_scores, eager.run(images, text).class_scores)


def test_a_warm_up_error_is_the_caller_s_and_leaves_graphs_on(eager):
    """A bad input fails in the warm-up (the eager forward) with the error it gets without graphs; nothing is
    turned off by it, and the next good call is captured."""
    seam = ReplaySeam()
    backend = graphed(seam)
    _, text = _inputs(eager, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FisaWarning)  # and no "graphs are off" line
        with pytest.raises(InputError, match="multiples of 32"):
            backend.run(torch.zeros(1, 3, 100, 100, dtype=torch.uint8), text)
        images, _ = _inputs(eager, 4)
        torch.testing.assert_close(backend.run(images, text).class_scores, eager.run(images, text).class_scores)
    assert seam.captures == 1 and not backend.graphs.failed and backend.graphs.failure is None


def test_a_failed_capture_runs_only_its_own_shape_eagerly(eager):
    class FailsAtBatchTwo(ReplaySeam):
        def capture(self, fn):
            if self.captures:
                raise RuntimeError("operation not permitted when stream is capturing")
            return super().capture(fn)

    seam = FailsAtBatchTwo()
    backend = graphed(seam)
    images, text = _inputs(eager, 4)
    backend.run(images, text)
    with pytest.warns(FisaWarning, match="CUDA graphs are off for batch 2 at 128x128, up to 8 classes"):
        backend.run(torch.cat([images, images]), text)
    backend.run(images, text)
    assert (seam.captures, seam.replays) == (1, 2) and len(backend.graphs.failed) == 1


def test_segmenter_labels_equal_with_and_without_graphs(eager):
    with_graphs = Segmenter(graphed(ReplaySeam()), default_checkpoint(), cache_dir="")
    without = Segmenter(eager, default_checkpoint(), cache_dir="")
    image = load_image(sample_images()[0])
    for seg in (with_graphs, without):
        seg.set_vocabulary(seg.default_vocabulary)
        assert not seg.text.flags.writeable and not seg.seen_in_training.flags.writeable  # kept on the device
    a, b = with_graphs.segment(image), without.segment(image)
    assert np.array_equal(a.semantic, b.semantic)
    assert torch.equal(a.panoptic.segment_map, b.panoptic.segment_map)


@pytest.mark.parametrize("decoder", ["transformer", "deformable"])  # the deformable one is FC-CLIP's
def test_the_forward_copies_nothing_from_the_host(decoder):
    """A tensor made from host data (torch.tensor, as_tensor, from_numpy, new_tensor) is a synchronous copy on
    CUDA, which a graph capture refuses: the whole forward then runs eagerly. The forward makes none."""
    import dataclasses

    from torch.overrides import TorchFunctionMode

    from fisa_rt.config import get_model_config
    from fisa_rt.inference import InferenceWrapper

    cfg = get_model_config("fisa-tiny-convnext")
    generator = dataclasses.replace(cfg.mask_generator, pixel_decoder=decoder, deformable_ffn=64, deformable_points=2)
    torch.manual_seed(0)
    wrapper = InferenceWrapper(create_model(dataclasses.replace(cfg, mask_generator=generator)).eval(), semantic=False)
    from_host = {torch.tensor, torch.as_tensor, torch.from_numpy, torch.Tensor.new_tensor}

    class FromHost(TorchFunctionMode):
        calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in from_host:
                FromHost.calls.append(func.__name__)
            return func(*args, **(kwargs or {}))

    images = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8)
    text, valid = random_text(5, wrapper.model.embed_dim), torch.ones(5, dtype=torch.bool)
    with torch.no_grad(), FromHost():
        wrapper(images, text, None, valid)
    assert FromHost.calls == []


def test_graphs_on_cpu_without_a_seam_are_refused():
    with pytest.raises(InputError, match="CUDA graphs need a CUDA device"):
        TorchBackend(default_checkpoint(), "cpu", cuda_graphs=True)


def test_graph_and_compile_flags_are_refused_by_other_backends(tmp_path):
    from fisa_rt.runtime.backends import open_backend

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read: the flags are checked first")
    for flags in ({"cuda_graphs": True}, {"compile": True}):
        with pytest.raises(InputError, match=r"^(compile|cuda_graphs)=True \(--[a-z-]+\) applies to the PyTorch"):
            open_backend(str(onnx), **flags)
