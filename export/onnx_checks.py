"""Graph hygiene for TensorRT: checker, shape inference, simplification, and the op set TensorRT's
ONNX parser accepts."""

from __future__ import annotations

import collections
import os
from typing import Dict, Set

import onnx

from fisa_rt.atomic import atomic_path
from fisa_rt.errors import InputError
from fisa_rt.kernels.onnx_ops import DOMAIN, NODES

# Operators TensorRT 10's ONNX parser imports natively (onnx-tensorrt docs/operators.md, "Y" rows; the
# restrictions there — e.g. Conv weights as initializers, Resize modes — hold for our graphs). The set is
# what TensorRT 10.3 (JetPack 6) has: nothing newer may appear in the portable graph.
TENSORRT_10_OPS: Set[str] = set(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
    Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid Hardmax HardSwish Identity If InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
    Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean Min Mod Mul
    Neg NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
    Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    """"domain::op" (or "op" for the default domain) -> count, subgraphs included."""
    counts = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)

    walk(model.graph)
    return dict(counts)


def unsupported_ops(model: onnx.ModelProto, allow_plugins: bool) -> Set[str]:
    plugins = {f"{DOMAIN}::{n}" for n in NODES} if allow_plugins else set()
    return {op for op in op_counts(model) if op not in TENSORRT_10_OPS and op not in plugins}


def check_graph(path: str, flavour: str) -> onnx.ModelProto:
    """onnx.checker (full), shape inference, and the TensorRT op check; raises InputError naming what fails."""
    if not os.path.isfile(path):
        raise InputError(f"ONNX file {path} does not exist")
    model = onnx.load(path)
    try:
        onnx.checker.check_model(model, full_check=flavour == "portable")
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{path} fails the ONNX checker: {exc}") from None
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=flavour == "portable")
    bad = unsupported_ops(model, allow_plugins=flavour == "fused")
    if bad:
        raise InputError(f"{path} uses ops TensorRT's ONNX parser does not import: {sorted(bad)}")
    return inferred


def simplify(path: str) -> None:
    """Constant folding and dead-code removal (onnxscript's optimizer), in place. Halves the node count
    of the TorchScript export (the dynamic-shape arithmetic folds away) without changing a value."""
    from onnxscript import optimizer

    model = optimizer.optimize(onnx.load(path))
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
