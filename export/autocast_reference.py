"""AutoCast's reference ranges reduced inside the graph, so that its memory is one inference's.

ModelOpt AutoCast decides which nodes stay fp32 from each tensor's range on the calibration inputs. Its
``ReferenceRunner`` gets them by marking every tensor of the graph as an output (polygraphy ``MARK_ALL``) and
running ONNX Runtime once, so the run holds every activation at once: fisa-vit-b16 at 640 px peaked at 15.7 GB
on one image (docs/design.md, "AutoCast's memory"). Here each tensor feeds a ReduceMin, a ReduceMax and a Shape
node whose results are the graph's only outputs, so ONNX Runtime frees each activation once it is reduced (4.4
GB in all for that conversion): one session, one run per calibration batch, and the ranges are ModelOpt's own
``TensorStats`` (what its classifier reads for multi-batch calibration).

:func:`reduced_reference` puts this runner in ModelOpt's place for one conversion. A ModelOpt without the names
it replaces gets its own runner, unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fisa_rt.onnxruntime_session import inference_session

RUNNER = "reduced in the graph, one run a batch"  # the manifest's mixed_precision.reference_run


def tensor_names(model) -> List[str]:
    """What ``MARK_ALL`` marks: every named output of a node that is not a Constant, each once, in graph order."""
    names = (out for node in model.graph.node if node.op_type != "Constant" for out in node.output if out)
    return list(dict.fromkeys(names))


def merged_range(low, high, shape: Tuple[int, ...], earlier, stats_type):
    """One batch's range of a tensor (its ``low`` and ``high`` values and its ``shape``) merged with ``earlier``
    (None for the first batch), as ModelOpt aggregates batches (``ReferenceRunner._aggregate_tensor_stats``: an
    empty tensor counts as 0, the shape is the first batch's, and the running values start at -inf/inf and come
    first in ``max``/``min``, so a batch whose range is NaN is passed over)."""
    now = (0, 0, 0) if 0 in shape else (max(abs(low), abs(high)), low, high)
    if earlier is None:
        earlier = stats_type(absmax=-np.inf, min_val=np.inf, max_val=-np.inf, shape=shape)
    return stats_type(absmax=max(earlier.absmax, now[0]), min_val=min(earlier.min_val, now[1]),
                      max_val=max(earlier.max_val, now[2]), shape=earlier.shape)


def _custom_ops(model) -> bool:
    """Whether ``model`` has nodes ONNX Runtime runs only with a library registered (TensorRT plugins)."""
    return any(node.domain not in ("", "ai.onnx", "com.microsoft") for node in model.graph.node)


def _elem_types(graph) -> Dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}


@contextlib.contextmanager
def _range_outputs(model, names: Sequence[str]) -> Iterator[List[str]]:
    """While open, ``model`` ends in each named tensor's ReduceMin, ReduceMax and Shape, which are its only outputs
    (yielded: three per name, in ``names``' order); on exit it is as it was. In place, since a copy would hold
    the weights once more. ONNX Runtime's CPU reductions take these types; bool is reduced as uint8, any other
    (the 16-bit and unsigned 32/64-bit integers, bfloat16) as float64, which holds them exactly up to 2^53
    (AutoCast only asks whether |x| exceeds its data_max, 512)."""
    import onnx
    from onnx import TensorProto

    native = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.UINT8,
              TensorProto.INT32, TensorProto.INT64}
    graph = model.graph
    types = _elem_types(graph)  # ModelOpt's model comes typed (its infer_types)
    if any(name not in types for name in names):
        types.update(_elem_types(onnx.shape_inference.infer_shapes(model).graph))
    taken = {out for node in graph.node for out in node.output} | {t.name for t in [*graph.input, *graph.initializer]}
    prefix = "fisa_rt.range"
    while any(name.startswith(prefix) for name in taken):
        prefix += "_"
    nodes, outputs = [], []
    for i, name in enumerate(names):
        source = name
        if types.get(name) not in native:
            source = f"{prefix}/{i}/cast"
            to = TensorProto.UINT8 if types.get(name) == TensorProto.BOOL else TensorProto.DOUBLE
            nodes.append(onnx.helper.make_node("Cast", [name], [source], to=to))
        for op in ("ReduceMin", "ReduceMax"):
            nodes.append(onnx.helper.make_node(op, [source], [f"{prefix}/{i}/{op}"], keepdims=0))
        nodes.append(onnx.helper.make_node("Shape", [name], [f"{prefix}/{i}/Shape"]))
        outputs += [f"{prefix}/{i}/{op}" for op in ("ReduceMin", "ReduceMax", "Shape")]
    saved = {field: [copy.deepcopy(v) for v in getattr(graph, field)] for field in ("value_info", "output")}
    count = len(graph.node)
    try:
        del graph.value_info[:]  # stale types fail ONNX Runtime's check (ModelOpt's run clears them too)
        graph.node.extend(nodes)
        del graph.output[:]
        graph.output.extend(onnx.helper.make_empty_tensor_value_info(out) for out in outputs)
        yield outputs
    finally:
        del graph.node[count:]
        for field, values in saved.items():
            del getattr(graph, field)[:]
            getattr(graph, field).extend(values)


def reduced_ranges(model, batches: Sequence[Mapping[str, np.ndarray]], stats_type,
                   providers=("CPUExecutionProvider",)) -> Optional[Dict[str, object]]:
    """Each input's and each :func:`tensor_names` tensor's range over the calibration ``batches``, from one ONNX
    Runtime session of ``model`` with the ranges reduced in the graph; ``model`` is left as it was. None where the
    added nodes take the graph past protobuf's 2 GB (ModelOpt's runner goes through external data there).
    ONNX Runtime's ReduceMax passes over a NaN that is not a tensor's first element, where numpy's (ModelOpt's)
    gives NaN, which is never out of range: such a tensor can keep its node fp32 here, never the reverse."""
    import onnx
    import onnxruntime as ort

    ranges: Dict[str, object] = {}
    for batch in batches:
        for name, value in batch.items():
            value = np.asarray(value)
            low, high = (np.min(value), np.max(value)) if value.size else (0, 0)
            ranges[name] = merged_range(low, high, value.shape, ranges.get(name), stats_type)
    names = tensor_names(model)
    options = ort.SessionOptions()
    # ONNX Runtime's default order ran most reductions after the whole forward, so every activation stayed alive
    # (fisa-vit-b16, 640 px: 8.9-9.8 GB); priority-based order runs each soon after its tensor (1.8-1.9 GB; the
    # plain forward: 1.8 GB)
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    with tempfile.TemporaryDirectory(prefix="fisa-rt-autocast-") as folder:
        # through a file: ONNX Runtime keeps the bytes it is given for the session's lifetime (the weights again)
        path = os.path.join(folder, "ranges.onnx")
        with _range_outputs(model, names) as outputs:
            if model.ByteSize() >= onnx.checker.MAXIMUM_PROTOBUF:
                return None
            with open(path, "wb") as f:
                f.write(model.SerializeToString())
        session = inference_session(path, options, providers)
    for batch in batches:
        values = session.run(outputs, dict(batch))
        for i, name in enumerate(names):
            low, high, shape = values[3 * i : 3 * i + 3]
            ranges[name] = merged_range(low[()], high[()], tuple(int(d) for d in shape), ranges.get(name), stats_type)
    return ranges


@contextlib.contextmanager
def reduced_reference() -> Iterator[Dict[str, str]]:
    """While open, AutoCast's reference run is :func:`reduced_ranges` over the calibration batches ModelOpt
    makes of its ``calibration_data``, where this ModelOpt has every name the runner uses. Yields
    ``{"runner": ...}``, which says afterwards which runner ran ("modelopt" or :data:`RUNNER`)."""
    ran = {"runner": "modelopt"}
    try:
        from modelopt.onnx import utils as onnx_utils
        from modelopt.onnx.autocast import convert as autocast
        from modelopt.onnx.autocast.referencerunner import ReferenceRunner, TensorStats
    except ImportError:
        yield ran
        return
    replaceable = getattr(autocast, "ReferenceRunner", None) is ReferenceRunner and hasattr(
        ReferenceRunner, "_load_inputs")
    if not replaceable or not hasattr(onnx_utils, "check_model_uses_external_data"):
        yield ran
        return

    class ReducedReferenceRunner(ReferenceRunner):
        def run(self, inputs=None):
            if inputs is None or onnx_utils.check_model_uses_external_data(self.model) or _custom_ops(self.model):
                return super().run(inputs)  # random inputs, external weights, or plugins ModelOpt registers
            batches = list(self._load_inputs(inputs))  # ModelOpt's own split of the calibration data
            ranges = reduced_ranges(self.model, batches, TensorStats, self.providers)
            if ranges is None:
                return super().run(inputs)
            ran["runner"] = RUNNER
            return ranges

    autocast.ReferenceRunner = ReducedReferenceRunner
    try:
        yield ran
    finally:
        autocast.ReferenceRunner = ReferenceRunner
