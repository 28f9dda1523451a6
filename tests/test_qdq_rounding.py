"""export/qdq_rounding.py: ONNX Runtime before 1.30 truncates float16 QuantizeLinear; the parity check rounds as
ONNX (and TensorRT) does on any ONNX Runtime, and the runtime names the fix."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from packaging.version import Version

from fisa_rt.export import parity, qdq_rounding

N = 4096


def _quantize_graph():
    """x (float32) -> four QuantizeLinear outputs: float16 input with its scale an initializer, a Constant node and a
    computed value, and one float32 input that the rewrite must leave alone."""
    half = helper.make_tensor("half_scale", TensorProto.FLOAT16, [], [0.0999755859375])
    single = helper.make_tensor("single_scale", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Constant", [], ["constant_scale"],
                         value=helper.make_tensor("c", TensorProto.FLOAT16, [], [0.05])),
        helper.make_node("Add", ["half_scale", "half_scale"], ["computed_scale"]),
        helper.make_node("QuantizeLinear", ["x16", "half_scale", "zero"], ["q_initializer"]),
        helper.make_node("QuantizeLinear", ["x16", "constant_scale", "zero"], ["q_constant"]),
        helper.make_node("QuantizeLinear", ["x16", "computed_scale", "zero"], ["q_computed"]),
        helper.make_node("QuantizeLinear", ["x", "single_scale", "zero"], ["q_float32"]),
    ]
    outputs = ["q_initializer", "q_constant", "q_computed", "q_float32"]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
                              [helper.make_tensor_value_info(o, TensorProto.INT8, [N]) for o in outputs],
                              [half, single, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _expected(x, scales):
    """ONNX's rule on the float16 values: nearest, ties to even, saturated (exact in float64)."""
    x16 = x.astype(np.float16).astype(np.float64)
    return [np.clip(np.rint(x16 / np.float64(np.float16(s))), -128, 127).astype(np.int8) for s in scales]


def test_the_rewrite_rounds_float16_quantize_as_onnx_specifies():
    model = _quantize_graph()
    assert [n.output[0] for n in qdq_rounding.float16_quantize_nodes(model)] == [
        "q_initializer", "q_constant", "q_computed"]
    x = np.random.default_rng(0).uniform(-15, 15, N).astype(np.float32)
    before = _run(model, x)
    assert qdq_rounding.quantize_in_float32(model) == 3
    onnx.checker.check_model(model, full_check=True)  # still typed and in topological order
    assert qdq_rounding.float16_quantize_nodes(model) == []
    after = _run(model, x)
    expected = _expected(x, [0.0999755859375, 0.05, 2 * np.float16(0.0999755859375)])
    for got, want in zip(after, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(after[3], np.clip(np.rint(x / np.float32(0.1)), -128, 127).astype(np.int8))
    # the installed runtime's own float16 path: correct from 1.30, about half the values one step short before
    wrong = sum(int((b != e).sum()) for b, e in zip(before, expected))
    assert (wrong > N // 4) == qdq_rounding.onnxruntime_truncates(), wrong


def test_the_probe_tells_what_the_installed_runtime_does():
    assert qdq_rounding.onnxruntime_truncates() == (Version(ort.__version__) < Version(qdq_rounding.FIXED_IN))


def _image_model(path):
    """A stand-in image model with a float16 Q/DQ pair on its way to both outputs."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT16, [], [0.0999755859375])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("Cast", ["image"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("QuantizeLinear", ["x16", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
        helper.make_node("Cast", ["dq"], ["mask_logits"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["text"], ["class_scores"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 8, 8]),
         helper.make_tensor_value_info("text", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 2, 8, 8]),
         helper.make_tensor_value_info("class_scores", TensorProto.FLOAT, [1, 2, 3])],
        [scale, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), path)
    return path


@pytest.mark.parametrize("truncates", [True, False])
def test_the_parity_check_rounds_as_tensorrt_on_any_runtime(tmp_path, monkeypatch, truncates):
    path = _image_model(str(tmp_path / "m.onnx"))
    installed_truncates = qdq_rounding.onnxruntime_truncates()
    monkeypatch.setattr(qdq_rounding, "onnxruntime_truncates", lambda: truncates)
    rewritten, rewrite = [], qdq_rounding.quantize_in_float32

    def counted_rewrite(model):
        rewritten.append(rewrite(model))
        return rewritten[-1]

    monkeypatch.setattr(qdq_rounding, "quantize_in_float32", counted_rewrite)
    image = np.random.default_rng(1).uniform(-12, 12, (1, 2, 8, 8)).astype(np.float32)
    masks, _ = parity.run_onnx(path, {"image": image, "text": np.zeros((1, 2, 3), np.float32)})
    assert rewritten == ([1] if truncates else [])
    if truncates or not installed_truncates:  # rounded as ONNX specifies, by the rewrite or by the runtime
        (want,) = _expected(image, [0.0999755859375])
        np.testing.assert_array_equal(masks, (want * np.float16(0.0999755859375)).astype(np.float32))


def test_the_runtime_names_the_fix_only_for_a_float16_qdq_graph_on_a_truncating_runtime(tmp_path, monkeypatch):
    qdq = _image_model(str(tmp_path / "m.onnx"))
    monkeypatch.setattr(qdq_rounding, "onnxruntime_truncates", lambda: True)
    note = qdq_rounding.truncation_note(onnx.load(qdq))
    assert f"onnxruntime>={qdq_rounding.FIXED_IN}" in note and "toward zero" in note
    assert qdq_rounding.truncation_note(_quantize_free(onnx.load(qdq))) is None
    monkeypatch.setattr(qdq_rounding, "onnxruntime_truncates", lambda: False)
    assert qdq_rounding.truncation_note(onnx.load(qdq)) is None


def _quantize_free(model):
    model.graph.node[1].op_type = "Identity"  # the QuantizeLinear goes: nothing is quantised any more
    del model.graph.node[1].input[1:]
    return model
