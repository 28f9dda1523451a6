"""The vocabulary-only part of an exported graph runs once per vocabulary (fisa_rt.runtime.vocabulary_graph)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fisa_rt.runtime.backends import OnnxRuntimeBackend
from fisa_rt.runtime.vocabulary_graph import VocabularyCache, split_vocabulary


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _graph_model(nodes, inputs, outputs, **graph) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "toy", inputs, outputs, **graph),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _toy_model(with_if: bool = False) -> onnx.ModelProto:
    """image (B, 4) and text (K, 4) -> scores (B, K): a text-only projection and normalisation, a constant shared
    by both halves, ``seen`` read by an image node, and optionally an If whose branch reads a vocabulary tensor."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
               numpy_helper.from_array(np.array([2.0], np.float32), "two")]
    nodes = [
        helper.make_node("Constant", [], ["half"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Mul", ["two", "half"], ["one"]),  # folds from constants: copied, never a boundary
        helper.make_node("MatMul", ["text", "w"], ["projected"]),
        helper.make_node("ReduceL2", ["projected"], ["norm"], keepdims=1, axes=[-1]),
        helper.make_node("Div", ["projected", "norm"], ["unit"]),
        helper.make_node("Dropout", ["unit"], ["unit_kept", ""]),  # "" names an omitted output, not a tensor
        helper.make_node("Mul", ["unit_kept", "one"], ["unit_scaled"]),
        helper.make_node("Transpose", ["unit_scaled"], ["unit_t"], perm=[1, 0]),
        helper.make_node("Clip", ["image", "", "two"], ["image_clipped"]),  # "" an omitted input
        helper.make_node("Mul", ["image_clipped", "one"], ["image_scaled"]),
        helper.make_node("MatMul", ["image_scaled", "unit_t"], ["logits"]),
        helper.make_node("Neg", ["logits"], ["negated"]),
        helper.make_node("Where", ["seen", "logits", "negated"], ["scores"]),
    ]
    if with_if:
        branch = helper.make_graph([helper.make_node("Identity", ["unit"], ["branch_out"])], "branch", [],
                                   [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)])
        nodes += [helper.make_node("ReduceSum", ["image"], ["total"], keepdims=0),
                  helper.make_node("Greater", ["total", "two"], ["big"]),
                  helper.make_node("If", ["big"], ["chosen"], then_branch=branch, else_branch=branch)]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "K"])]
    if with_if:
        outputs.append(helper.make_tensor_value_info("chosen", TensorProto.FLOAT, ["K", 4]))
    model = _graph_model(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 4]),
         helper.make_tensor_value_info("text", TensorProto.FLOAT, ["K", 4]),
         helper.make_tensor_value_info("seen", TensorProto.BOOL, ["K"])],
        outputs, initializer=weights,
    )
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("with_if", [False, True])
def test_split_toy_graph_equals_the_unsplit_one(with_if):
    model = _toy_model(with_if)
    whole = _session(model)
    split = split_vocabulary(model)
    assert split.vocabulary_inputs == ["text"] and split.image_inputs == ["image", "seen"]
    # the If reads `unit` from the outer scope, so `unit` crosses the cut besides what the MatMul reads
    assert split.boundary == (["unit", "unit_t"] if with_if else ["unit_t"])
    assert {n.op_type for n in split.vocabulary.graph.node} == {"Constant", "Mul", "MatMul", "ReduceL2", "Div",
                                                                "Dropout", "Transpose"}
    assert [i.name for i in model.graph.input] == ["image", "seen"] + split.boundary  # model is the image graph now
    vocabulary, image = _session(split.vocabulary), _session(model)
    rng = np.random.default_rng(1)
    for k in (1, 3, 17):
        feed = {"image": rng.standard_normal((2, 4)).astype(np.float32),
                "text": rng.standard_normal((k, 4)).astype(np.float32), "seen": rng.random(k) > 0.5}
        want = whole.run(None, feed)
        boundary = dict(zip(split.boundary, vocabulary.run(split.boundary, {"text": feed["text"]})))
        got = image.run(None, {"image": feed["image"], "seen": feed["seen"], **boundary})
        assert len(got) == len(want)
        for g, w in zip(got, want):  # ORT may fuse differently on either side of the cut: fp32 rounding apart
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_graph_without_vocabulary_only_work_is_not_split():
    model = _toy_model()
    for node in model.graph.node:  # make the text projection read the image too
        if node.output[0] == "projected":
            node.input[0] = "image"
    before = model.SerializeToString()
    assert split_vocabulary(model) is None and model.SerializeToString() == before


def _split_equals_whole(model: onnx.ModelProto, feeds, atol: float = 0.0):
    """Split ``model`` and run each feed through one cache: the outputs equal the whole graph's."""
    whole = _session(model)
    split = split_vocabulary(model)
    assert split is not None
    cache, image = VocabularyCache(split, _session(split.vocabulary)), _session(model)
    for feed in feeds:
        for got, want in zip(image.run(None, cache.image_feed(feed)), whole.run(None, feed)):
            np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    return split


_VI = helper.make_tensor_value_info


def test_an_initializer_listed_as_an_input_stays_an_input_with_its_default():
    """keep_initializers_as_inputs / IR < 4 exports: the caller may override such a weight, so it is no constant."""
    weight = numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["w", "text"], ["unit"]), helper.make_node("Neg", ["text"], ["negated"]),
             helper.make_node("MatMul", ["image", "unit"], ["a"]),
             helper.make_node("MatMul", ["image", "negated"], ["b"]), helper.make_node("Add", ["a", "b"], ["scores"])]
    model = _graph_model(nodes, [_VI("image", TensorProto.FLOAT, ["B", 4]), _VI("text", TensorProto.FLOAT, [4, "K"]),
                                 _VI("w", TensorProto.FLOAT, [4, 4])],
                         [_VI("scores", TensorProto.FLOAT, ["B", "K"])], initializer=[weight])
    feed = {"image": np.ones((2, 4), np.float32), "text": np.arange(12, dtype=np.float32).reshape(4, 3)}
    split = _split_equals_whole(model, [feed, {**feed, "w": np.eye(4, dtype=np.float32)}])
    assert split.boundary == ["negated"] and "w" in split.image_inputs


def test_random_nodes_stay_in_the_image_graph():
    """A draw the vocabulary graph cached would differ from the image graph's fresh one: (text + r) - r."""
    nodes = [helper.make_node("RandomUniform", [], ["r"], shape=[4], dtype=TensorProto.FLOAT),
             helper.make_node("Add", ["text", "r"], ["shifted"]), helper.make_node("Neg", ["text"], ["negated"]),
             helper.make_node("Add", ["image", "shifted"], ["a"]), helper.make_node("Sub", ["a", "r"], ["b"]),
             helper.make_node("Add", ["b", "negated"], ["scores"])]
    model = _graph_model(nodes, [_VI("image", TensorProto.FLOAT, ["B", 4]), _VI("text", TensorProto.FLOAT, [4])],
                         [_VI("scores", TensorProto.FLOAT, ["B", 4])])
    feed = {"image": np.zeros((1, 4), np.float32), "text": np.ones(4, np.float32)}
    split = _split_equals_whole(model, [feed] * 3, atol=1e-6)
    assert split.boundary == ["negated"]


def test_a_vocabulary_differing_only_in_a_zero_s_sign_is_another_vocabulary():
    nodes = [helper.make_node("Reciprocal", ["text"], ["inverse"]),
             helper.make_node("Add", ["image", "inverse"], ["scores"])]
    model = _graph_model(nodes, [_VI("image", TensorProto.FLOAT, ["B", 2]), _VI("text", TensorProto.FLOAT, [2])],
                         [_VI("scores", TensorProto.FLOAT, ["B", 2])])
    image = np.zeros((1, 2), np.float32)
    _split_equals_whole(model, [{"image": image, "text": np.array(t, np.float32)} for t in ([0.0, 1], [-0.0, 1])])


def test_a_cut_tensor_s_recorded_size_does_not_bind_the_image_graph():
    """A traced, fixed class count in value_info is only a hint inside a graph; a graph input's sizes are checked."""
    nodes = [helper.make_node("Neg", ["text"], ["unit"]), helper.make_node("MatMul", ["image", "unit"], ["scores"])]
    model = _graph_model(nodes, [_VI("image", TensorProto.FLOAT, ["B", 4]), _VI("text", TensorProto.FLOAT, [4, "K"])],
                         [_VI("scores", TensorProto.FLOAT, ["B", "K"])],
                         value_info=[_VI("unit", TensorProto.FLOAT, [4, 3])])
    _split_equals_whole(model, [{"image": np.ones((2, 4), np.float32), "text": np.ones((4, k), np.float32)}
                                for k in (3, 5)])


class _CountingSession:
    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, outputs, feed, run_options=None):
        self.runs += 1
        return self.session.run(outputs, feed, run_options)


def test_cache_finds_vocabularies_by_value_never_by_identity():
    split = split_vocabulary(_toy_model())
    counting = _CountingSession(_session(split.vocabulary))
    cache = VocabularyCache(split, counting)
    image, rng = np.ones((1, 4), np.float32), np.random.default_rng(2)
    texts = [rng.standard_normal((k, 4)).astype(np.float32) for k in (2, 3, 4, 5, 6)]

    def feed(text):
        return {"image": image, "text": text, "seen": np.zeros(len(text), bool)}

    first = cache.image_feed(feed(texts[0]))
    assert set(first) == {"image", "seen", "unit_t"} and counting.runs == 1
    assert cache.image_feed(feed(texts[0].copy()))["unit_t"] is first["unit_t"] and counting.runs == 1  # equal values
    texts[0][0, 0] += 1  # refilled in place: a new vocabulary in the same array
    refilled = cache.image_feed(feed(texts[0]))
    assert counting.runs == 2 and not np.array_equal(refilled["unit_t"], first["unit_t"])
    for text in texts[1:4]:  # fills the cache (KEPT = 4) with the refilled one still in it
        cache.image_feed(feed(text))
    assert counting.runs == 5
    cache.image_feed(feed(texts[0]))  # still kept
    cache.image_feed(feed(texts[3]))
    assert counting.runs == 5
    cache.image_feed(feed(texts[4]))  # a fifth evicts the least recently used, texts[1]
    cache.image_feed(feed(texts[1]))
    assert counting.runs == 7 and len(cache._entries) == VocabularyCache.KEPT
    cache.image_feed(feed(texts[2][:1].copy()))  # a prefix is another vocabulary
    assert counting.runs == 8


@pytest.mark.parametrize("kind", ["ort", "portable"])
def test_backend_split_matches_the_whole_graph(artefacts, kind):
    """fp32, on the embedded model, across vocabulary sizes and back: equal to fp32 rounding (bit for bit with
    onnxruntime 1.32, but a fusion on either side of the cut may round differently)."""
    split = OnnxRuntimeBackend(artefacts[kind], threads=1)
    whole = OnnxRuntimeBackend(artefacts[kind], threads=1, split_graph=False)
    assert whole.vocabulary is None
    boundary = split.vocabulary.boundary
    assert sum("seve" in name for name in boundary) >= 2, boundary  # each adapter's keys and values moved
    images = torch.randint(0, 256, (2, 3, split.image_size, split.image_size), dtype=torch.uint8)
    rng = np.random.default_rng(3)
    texts = [rng.standard_normal((k, split.embed_dim)).astype(np.float32) for k in (1, 5, 133)]
    for text in texts + texts[:1]:
        got, want = split.run(images, text), whole.run(images, text)
        torch.testing.assert_close(got.mask_logits, want.mask_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.class_scores, want.class_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimised", [False, True])
def test_split_of_both_heads_exports(tiny_model, tmp_path, optimised):
    """Both class heads (the mask-average one reads ``seen``), SEVE gates open, as exported and as build_engine.py's
    ONNX Runtime-optimised copy: outputs equal to the whole graph's, and SEVE's keys and values cross the cut."""
    from fisa_rt.export.build_engine import ort_optimised
    from fisa_rt.export.onnx_export import export_image_model

    path = export_image_model(tiny_model, str(tmp_path / "m.onnx"))
    if optimised:
        path = ort_optimised(path, str(tmp_path / "m.ort.onnx"))
    model = onnx.load(path)
    whole = _session(model)
    split = split_vocabulary(model)
    has_seen = tiny_model.cfg.classifier.head == "mask-average"
    read = set(split.vocabulary_inputs) | set(split.image_inputs)
    assert split.image_inputs[0] == "image" and "text" not in split.image_inputs and ("seen" in read) == has_seen
    assert sum("seve" in name for name in split.boundary) >= 2, split.boundary
    cache, image = VocabularyCache(split, _session(split.vocabulary)), _session(model)
    rng = np.random.default_rng(4)
    for k in (1, 6, 40):
        text = rng.standard_normal((k, 64)).astype(np.float32)
        feed = {"image": rng.integers(0, 256, (2, 3, 128, 128), dtype=np.uint8), "text": text / 3}
        if has_seen:
            feed["seen"] = rng.random(k) > 0.5
        for got, want in zip(image.run(None, cache.image_feed(feed)), whole.run(None, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_without_a_usable_temporary_folder_the_whole_graph_runs_with_one_warning(artefacts, tmp_path, monkeypatch):
    import tempfile

    from fisa_rt.errors import FisaWarning

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.warns(FisaWarning, match="every node runs once per image: cannot write or load the split graph"):
        backend = OnnxRuntimeBackend(artefacts["ort"], threads=1)
    assert backend.vocabulary is None
    images = torch.zeros((1, 3, backend.image_size, backend.image_size), dtype=torch.uint8)
    assert backend.run(images, np.ones((2, backend.embed_dim), np.float32)).class_scores.shape[-1] == 3


def test_a_split_graph_onnxruntime_refuses_falls_back_to_the_whole_graph_with_one_warning(artefacts, monkeypatch):
    from fisa_rt.errors import FisaWarning
    from fisa_rt.runtime import vocabulary_graph

    def broken(model):
        split = split_vocabulary(model)
        split.vocabulary.graph.node[0].op_type = "NoSuchOp"
        return split

    monkeypatch.setattr(vocabulary_graph, "split_vocabulary", broken)
    with pytest.warns(FisaWarning, match="cannot write or load the split graph .*NoSuchOp"):
        backend = OnnxRuntimeBackend(artefacts["ort"], threads=1)
    assert backend.vocabulary is None and [i.name for i in backend.session.get_inputs()] == ["image", "text"]
