"""AutoCast's reference ranges taken a slice of the graph at a time, so that its memory is bounded.

ModelOpt AutoCast decides which nodes stay fp32 from each tensor's range on the calibration inputs. Its
``ReferenceRunner`` gets them by marking every tensor of the graph as an output (polygraphy ``MARK_ALL``) and
running ONNX Runtime once, so the run holds every activation at once: fisa-vit-b16 at 640 px peaked at 15.7 GB
on one image (docs/design.md, "AutoCast's memory"). Here the same graph runs once per slice of ``SLICE_TENSORS``
tensors, and only each tensor's range is kept (ModelOpt's own ``TensorStats``, what its classifier reads for
multi-batch calibration), so the peak is the weights plus one slice's activations.

:func:`sliced_reference` puts the sliced runner in ModelOpt's place for one conversion. A ModelOpt without the
names it replaces gets its own runner, unchanged.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, List, Mapping, Sequence

import numpy as np

SLICE_TENSORS = 256  # marked outputs per ONNX Runtime run: about four ViT-B blocks' activations


def tensor_names(model) -> List[str]:
    """What ``MARK_ALL`` marks: every named output of a node that is not a Constant, each once, in graph order."""
    names = (out for node in model.graph.node if node.op_type != "Constant" for out in node.output if out)
    return list(dict.fromkeys(names))


def merged_range(value: np.ndarray, earlier, stats_type):
    """``value``'s range merged with ``earlier`` (None for the first batch), as ModelOpt aggregates batches
    (``ReferenceRunner._aggregate_tensor_stats``: the shape is the first batch's)."""
    empty = value.size == 0
    now = (0, 0, 0) if empty else (np.max(np.abs(value)), np.min(value), np.max(value))
    if earlier is None:
        return stats_type(absmax=now[0], min_val=now[1], max_val=now[2], shape=value.shape)
    return stats_type(absmax=max(earlier.absmax, now[0]), min_val=min(earlier.min_val, now[1]),
                      max_val=max(earlier.max_val, now[2]), shape=earlier.shape)


def sliced_ranges(model, batches: Sequence[Mapping[str, np.ndarray]], stats_type, providers=("CPUExecutionProvider",),
                  slice_tensors: int = SLICE_TENSORS) -> Dict[str, object]:
    """Each input's and each marked tensor's range over the calibration ``batches``, ``slice_tensors`` tensors
    per ONNX Runtime session. ``model``'s outputs are changed: pass a copy."""
    import onnx
    import onnxruntime as ort

    ranges: Dict[str, object] = {}
    for batch in batches:
        for name, value in batch.items():
            ranges[name] = merged_range(np.asarray(value), ranges.get(name), stats_type)
    names = tensor_names(model)
    for start in range(0, len(names), slice_tensors):
        chunk = names[start : start + slice_tensors]
        del model.graph.output[:]
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in chunk)
        session = ort.InferenceSession(model.SerializeToString(), providers=list(providers))
        for batch in batches:
            for name, value in zip(chunk, session.run(chunk, dict(batch))):
                ranges[name] = merged_range(value, ranges.get(name), stats_type)
        del session
    return ranges


@contextlib.contextmanager
def sliced_reference() -> Iterator[Dict[str, str]]:
    """While open, AutoCast's reference run is :func:`sliced_ranges` over the calibration batches ModelOpt
    makes of its ``calibration_data``, where this ModelOpt has every name the sliced runner uses. Yields
    ``{"runner": ...}``, which says afterwards which runner ran ("modelopt" or "sliced, N tensors a run")."""
    ran = {"runner": "modelopt"}
    try:
        from modelopt.onnx import utils as onnx_utils
        from modelopt.onnx.autocast import convert as autocast
        from modelopt.onnx.autocast.referencerunner import ReferenceRunner, TensorStats
    except ImportError:
        yield ran
        return
    needed = ("clear_stale_value_info", "check_model_uses_external_data", "is_model_too_large_for_protobuf")
    replaceable = getattr(autocast, "ReferenceRunner", None) is ReferenceRunner and hasattr(
        ReferenceRunner, "_load_inputs")
    if not replaceable or not all(hasattr(onnx_utils, name) for name in needed):
        yield ran
        return

    class SlicedReferenceRunner(ReferenceRunner):
        def run(self, inputs=None):
            if inputs is None or onnx_utils.check_model_uses_external_data(self.model) or \
                    onnx_utils.is_model_too_large_for_protobuf(self.model):
                return super().run(inputs)  # random inputs, or a model ModelOpt's runner passes through a file
            batches = list(self._load_inputs(inputs))  # ModelOpt's own split of the calibration data
            model = copy.deepcopy(self.model)
            onnx_utils.clear_stale_value_info(model)  # as ModelOpt's run does: stale types fail ONNX Runtime's check
            ran["runner"] = f"sliced, {SLICE_TENSORS} tensors a run"
            return sliced_ranges(model, batches, TensorStats, self.providers)

    autocast.ReferenceRunner = SlicedReferenceRunner
    try:
        yield ran
    finally:
        autocast.ReferenceRunner = ReferenceRunner
