"""ONNX Runtime before 1.30 rounds float16 QuantizeLinear toward zero on the CPU; the fix for its checks.

ONNX's QuantizeLinear rounds ``x / scale`` to nearest, ties to even, and TensorRT does. ONNX Runtime's CPU
kernel for float16 ``x`` truncated instead (microsoft/onnxruntime#18576, fixed by #32452 in 1.30.0): one
quantisation step off for about half the values. ModelOpt's Q/DQ graphs quantise float16 tensors, so on such an
ONNX Runtime (the newest for Python 3.10 is 1.23.2; JetPack 6's builds are older) the int8 graph computes other
numbers than TensorRT will. Measured on the embedded model's int8 graph: 289,121 of 581,632 weights one step off;
minimum class-probability cosine 0.989 against 0.9998 on 1.32, max |delta mask logit| 6.99 against 4.55.

The build's parity check (``parity.run_onnx``) stands in for TensorRT, so on such a runtime it quantises in
float32 (``quantize_in_float32``): exact for float16 values, and what ONNX Runtime 1.30+ computes (bit for bit
on that graph). The runtime, which runs the graph as given, says what to install (``truncation_note``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional

import onnx
from onnx import TensorProto, helper

from fisa_rt.onnxruntime_session import inference_session

FIXED_IN = "1.30.0"


@lru_cache(maxsize=None)
def onnxruntime_truncates() -> bool:
    """Whether the installed ONNX Runtime's CPU provider rounds float16 QuantizeLinear toward zero: asked of the
    runtime itself (one two-value graph), so a patched or custom build is judged by what it does."""
    import numpy as np

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.INT8, [2])
    scale = helper.make_tensor("scale", TensorProto.FLOAT16, [], [0.1])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])], "probe", [x], [y],
                              [scale, zero])
    # IR 9 with opset 19: what ONNX Runtime 1.15 and newer read
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    session = inference_session(model.SerializeToString())
    (out,) = session.run(None, {"x": np.array([0.07, -0.07], np.float16)})  # 0.7 and -0.7 steps: 1, -1
    return out.tolist() == [0, 0]


def float16_quantize_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    """The graph's QuantizeLinear nodes whose input is float16 (its scale's type: the operator's T1 is both)."""
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not quantize:  # every ONNX model the runtime opens comes here: an unquantised one costs one pass
        return []
    types = {t.name: t.data_type for t in model.graph.initializer}
    types.update({n.output[0]: a.t.data_type for n in model.graph.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value"})
    if {n.input[1] for n in quantize} - set(types):  # a computed scale: its type from shape inference
        inferred = onnx.shape_inference.infer_shapes(model).graph
        types.update({v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]})
    return [n for n in quantize if types.get(n.input[1]) == TensorProto.FLOAT16]


def quantize_in_float32(model: onnx.ModelProto) -> int:
    """Feed every float16 QuantizeLinear of ``model`` float32 casts of its input and scale, in place; returns how
    many it changed. Float16 values are exact in float32, so the quotient rounds as ONNX specifies."""
    # by output name: protobuf hands out a new wrapper object at each access, so identities do not hold
    targets = {n.output[0] for n in float16_quantize_nodes(model)}
    casts, ordered = {}, []
    for node in model.graph.node:  # each cast goes just before its first consumer: the order stays topological
        if node.op_type == "QuantizeLinear" and node.output[0] in targets:
            for slot in (0, 1):
                name = node.input[slot]
                if name not in casts:
                    casts[name] = f"{name}_float32_for_quantize"
                    ordered.append(helper.make_node("Cast", [name], [casts[name]], to=TensorProto.FLOAT,
                                                    name=f"{name}_Cast_float32_for_quantize"))
                node.input[slot] = casts[name]
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return len(targets)


def truncation_note(model: onnx.ModelProto) -> Optional[str]:
    """One line for a runtime about to run ``model`` on an ONNX Runtime that truncates; None where nothing is
    affected."""
    if not float16_quantize_nodes(model) or not onnxruntime_truncates():
        return None
    import onnxruntime as ort

    return (f"ONNX Runtime {ort.__version__} rounds float16 QuantizeLinear toward zero (microsoft/onnxruntime#18576): "
            f"this Q/DQ graph's results are less accurate than TensorRT's; pip install 'onnxruntime>={FIXED_IN}' "
            "(Python >= 3.11), or run it on TensorRT")
