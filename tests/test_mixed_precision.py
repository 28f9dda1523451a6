"""The fp16 ONNX (ModelOpt AutoCast, what a strongly typed fp16 engine is built from) against the fp32
reference, on ONNX Runtime CPU.

Thresholds, and why: fp16 keeps 11 significant bits (relative spacing 2^-11 = 4.9e-4), and the fp16
graph rounds every activation it keeps in fp16, ~1.8k nodes deep, while LayerNorm, Softmax and the
cosine-logit norms stay fp32 (``mixed_precision.FP32_OP_TYPES``). Errors therefore do not cancel as in
fp32's summation-order differences (tests/test_export.py: 1e-4), but stay at the percent level:
* mask logits: cosine similarity >= 0.999; max |delta| <= 1 % of the largest |logit| (some 40 layers
  deep, each rounding at 2^-11 relative); the mask decision (logit > 0) flips on <= 0.1 % of the logits;
* class probabilities: max |delta| <= 0.01 on every query whose binary mask stays put (IoU >= 0.8 between the two
  graphs' masks; one pixel more on a 5-pixel mask is IoU 0.83); at most 1 % of the queries may move. The classifier
  attends only under a query's mask, so a query whose mask changes shape is classified on other pixels: on this
  machine (AVX512-FP16) the cat photograph's query 6, an 18-pixel mask whose logits sit at 0, gains 9 pixels in fp16
  and its void probability moves by 0.116, while every stable query moves <= 0.0016. Asserting the maximum over all
  queries measured how close some mask logit sat to 0, not the graph (docs/deploy.md, "fp16 parity");
* per-pixel label agreement of the semantic maps >= 99 % (pixels where two classes tie flip);
* PQ and mIoU on the validation slice within 1.0 point.
Measured on the embedded model, 4 scenes + 3 photographs, 2026-12-04 (docs/deploy.md): cosine 0.9999981,
max |delta logit| 0.66 = 0.9 % of 74.6, flips 0.0063 % (9 pixels, one query), 1 of 140 queries moved, max
|delta prob| of the others 0.0016.
"""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fisa_rt import MissingDependencyError
from fisa_rt.export.manifest import read_manifest, sha256_file
from fisa_rt.export.mixed_precision import FP32_OP_TYPES
from fisa_rt.export.parity import mask_iou
from fisa_rt.postprocess import semantic_inference
from fisa_rt.runtime.segmenter import Segmenter

from test_export import _photos, output_dims

pytest.importorskip("modelopt", reason="ModelOpt is in the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def reference():
    from fisa_rt.checkpoint import load_model
    from fisa_rt.runtime.assets import default_checkpoint

    model, info = load_model(default_checkpoint())
    return model.float().eval(), info


@pytest.fixture(scope="module")
def fp16(artefacts):
    assert "fp16" in artefacts, artefacts.get("log", "")[-2000:]
    return artefacts["fp16"]


def test_build_writes_the_fp16_onnx_with_what_stayed_fp32(fp16, artefacts):
    manifest = read_manifest(fp16)
    assert manifest["precision"] == "fp16" and manifest["source_onnx"]["sha256"] == sha256_file(artefacts["portable"])
    record = manifest["mixed_precision"]
    assert record["fp32_op_types"] == list(FP32_OP_TYPES) and 0 < len(record["fp32_nodes"]) < record["nodes"] / 2
    assert record["calibration_images"] == 4  # every bundled scene at fisa-tiny's 128 px
    assert record["reference_run"] == "reduced in the graph, one run a batch"  # export/autocast_reference.py
    model = onnx.load(fp16)
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    kept = [n for n in model.graph.node if n.op_type in FP32_OP_TYPES]
    assert kept and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT for n in kept)
    assert {n.name for n in kept} <= set(record["fp32_nodes"])
    # ModelOpt's warnings (export/modelopt_log.py): each once in the manifest, and as one warning of the build's
    messages = record["modelopt_log"]
    assert all(isinstance(m, str) and m for m in messages) and len(set(messages)) == len(messages)
    assert [w for w in artefacts["warnings"] if w.startswith("ModelOpt: ")] == [f"ModelOpt: {m}" for m in messages]
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert sum(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in matmuls) > len(matmuls) / 2
    # the graph's interface is unchanged: uint8 image, fp32 text in; fp32 outputs
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert output_dims(model) == output_dims(onnx.load(artefacts["portable"]))  # numbers where fixed (test_export)
    assert "--stronglyTyped" in artefacts["log"] and "--fp16" not in artefacts["log"]
    assert f"--onnx={fp16}" in artefacts["log"]


def test_fp16_onnx_meets_its_parity_thresholds_against_fp32(fp16, artefacts, reference):
    model, info = reference
    images = _photos(model.cfg.image_size)
    text = model.encode_vocabulary(info.vocabulary).numpy()
    feed = {"image": images.numpy(), "text": text}
    providers = ["CPUExecutionProvider"]
    ref_masks, ref_probs = ort.InferenceSession(artefacts["portable"], providers=providers).run(None, feed)
    masks, probs = ort.InferenceSession(fp16, providers=["CPUExecutionProvider"]).run(None, feed)
    cosine = float(np.dot(masks.ravel(), ref_masks.ravel()) / np.linalg.norm(masks) / np.linalg.norm(ref_masks))
    assert cosine >= 0.999
    assert np.abs(masks - ref_masks).max() <= 0.01 * np.abs(ref_masks).max()
    assert np.mean((masks > 0) != (ref_masks > 0)) <= 1e-3
    stable = mask_iou(masks > 0, ref_masks > 0) >= 0.8
    assert stable.mean() >= 0.99, np.argwhere(~stable)
    assert np.abs(probs - ref_probs).max(-1)[stable].max() <= 0.01
    agreement = []
    for b in range(len(images)):
        labels = [semantic_inference(torch.from_numpy(np.log(np.clip(p[b], 1e-12, None))), torch.from_numpy(m[b]))
                  .label_map for p, m in ((probs, masks), (ref_probs, ref_masks))]
        agreement.append(float((labels[0] == labels[1]).float().mean()))
    assert np.mean(agreement) >= 0.99, agreement


def test_the_build_lets_go_of_the_pytorch_model_before_autocast(tmp_path, monkeypatch):
    """Its memory goes to AutoCast's run and then to TensorRT's builder: fisa-vit-b16's whole fp16 build peaked at
    6.2 GB with the model held, 5.6 GB without (scripts/fp16-build-memory.py)."""
    import weakref

    from fisa_rt import InputError, checkpoint
    from fisa_rt.export import mixed_precision
    from fisa_rt.export.build_engine import main

    loaded, alive = [], []

    def load_model(*args, **kwargs):
        model, info = real(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, info

    def convert_fp16(onnx_path, out_path, calibration):
        alive.extend(ref() is not None for ref in loaded)
        raise InputError("stopped where AutoCast would run")

    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", load_model)
    monkeypatch.setattr(mixed_precision, "convert_fp16", convert_fp16)
    assert main(["--out", str(tmp_path / "build"), "--precision", "fp16"]) == 2
    assert alive and not any(alive)


def test_autocast_calibrates_on_fewer_scenes_as_the_canvas_grows():
    """Its reference run holds every activation of every scene at once: fisa-vit-b16's four 640-pixel scenes were
    killed past 20 GB (one: 15.7 GB)."""
    from fisa_rt.export.build_engine import calibration_scenes
    from fisa_rt.runtime.assets import sample_images

    assert calibration_scenes(128) == calibration_scenes(256) == sample_images()
    assert len(calibration_scenes(320)) == 2
    assert calibration_scenes(640) == calibration_scenes(1344) == sample_images()[:1]


def test_the_reduced_reference_run_gives_modelopt_s_own_ranges(artefacts, tmp_path):
    """AutoCast decides fp32 nodes from these ranges; ModelOpt's run held every activation at once (15.7 GB for
    fisa-vit-b16). Reduced in the graph, over ModelOpt's own split of the calibration file (one batch per image
    here), every tensor's range must be the same: to 1e-5 relative, since the two sessions' graphs fuse
    differently (fisa-vit-b16: at most 1.8e-6 apart)."""
    from modelopt.onnx.autocast.referencerunner import ReferenceRunner, TensorStats

    from fisa_rt.export.autocast_reference import reduced_ranges, tensor_names

    model = onnx.load(artefacts["portable"])
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert sorted(inputs) == ["image", "text"]
    photos = _photos(128)[:2].numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(inputs["image"].elem_type))
    text = np.random.default_rng(0).standard_normal((7, inputs["text"].shape.dim[1].dim_value)).astype(np.float32)
    np.savez(tmp_path / "calibration.npz", image=photos, text=text)
    runner = ReferenceRunner(model, ["cpu"])
    expected = runner.run(str(tmp_path / "calibration.npz"))
    batches = list(runner._load_inputs(str(tmp_path / "calibration.npz")))
    assert len(batches) == 2 and len(tensor_names(model)) > 600
    got = reduced_ranges(model, batches, TensorStats, runner.providers)
    assert got.keys() == expected.keys()
    for name, stats in expected.items():
        assert got[name].shape == stats.shape, name
        assert np.allclose([got[name].absmax, got[name].min_val, got[name].max_val],
                           [stats.absmax, stats.min_val, stats.max_val], rtol=1e-5, atol=1e-6), name


def test_reduced_ranges_of_every_tensor_type_and_of_empty_tensors_are_numpy_s():
    """ONNX Runtime reduces float, int8/uint8/int32/int64 and float16 itself; bool goes through uint8, the other
    integers through float64. An empty tensor counts as 0 (ModelOpt's rule); the shape is the first batch's. The
    model is changed only while the ranges are taken (no copy of its weights)."""
    from onnx import TensorProto, helper

    from fisa_rt.export.autocast_reference import reduced_ranges

    stats = collections.namedtuple("Stats", "absmax min_val max_val shape")
    kinds = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "f64": TensorProto.DOUBLE, "i64": TensorProto.INT64,
             "i32": TensorProto.INT32, "i16": TensorProto.INT16, "u8": TensorProto.UINT8, "u16": TensorProto.UINT16}
    # unsigned types from |x|: a negative float's cast to them is undefined
    nodes = [helper.make_node("Cast", ["ax" if k.startswith("u") else "x"], [k], to=t) for k, t in kinds.items()]
    nodes += [helper.make_node("Abs", ["x"], ["ax"]), helper.make_node("Less", ["x", "zero"], ["neg"]),  # bool
              helper.make_node("Slice", ["x", "zero_i", "zero_i"], ["empty"]), helper.make_node("Neg", ["x"], ["y"])]
    zeros = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("zero_i", TensorProto.INT64, [1], [0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], zeros)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    batches = [{"x": np.array([[-100.5, 2, 3], [4, 5, 6]], np.float32)}, {"x": np.array([[1, 2, 120.25]], np.float32)}]
    before = model.SerializeToString()
    got = reduced_ranges(model, batches, stats)
    assert model.SerializeToString() == before
    assert set(got) == {"x", "ax", "y", "neg", "empty", *kinds}
    for name, cast in (("f32", np.float32), ("f16", np.float16), ("f64", np.float64), ("i64", np.int64),
                       ("i32", np.int32), ("i16", np.int16), ("u8", np.uint8), ("u16", np.uint16), ("y", None),
                       ("neg", None)):
        values = [-b["x"] if name == "y" else b["x"] < 0 if name == "neg" else
                  (np.abs(b["x"]) if name.startswith("u") else b["x"]).astype(cast) for b in batches]
        both = np.concatenate([v.ravel() for v in values])
        want = (np.max(np.abs(both)), np.min(both), np.max(both))
        assert (got[name].absmax, got[name].min_val, got[name].max_val) == want, (name, got[name], want)
        assert got[name].shape == (2, 3), name
    assert got["x"] == stats(120.25, -100.5, 120.25, (2, 3))
    assert got["empty"] == stats(0, 0, 0, (0, 3))


def test_a_batch_whose_range_is_nan_is_passed_over_as_modelopt_does():
    """ModelOpt's running values start at -inf/inf and come first in max/min, so a NaN batch range drops out;
    starting from the first batch's NaN kept every range NaN, never above data_max, and the node went fp16."""
    from onnx import TensorProto, helper

    from fisa_rt.export.autocast_reference import reduced_ranges

    stats = collections.namedtuple("Stats", "absmax min_val max_val shape")
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    batches = [{"x": np.array([[np.nan, 2, 3]], np.float32)}, {"x": np.array([[1000, 1, 1]], np.float32)}]
    got = reduced_ranges(model, batches, stats)
    assert got["x"] == stats(1000, 1, 1000, (1, 3)) and got["y"] == stats(1000, -1000, -1, (1, 3))


def test_the_reduced_runner_stands_in_for_modelopt_s_only_while_open_and_only_where_it_can(monkeypatch, tmp_path):
    from modelopt.onnx.autocast import convert as autocast
    from modelopt.onnx.autocast.referencerunner import ReferenceRunner

    from fisa_rt.export.autocast_reference import RUNNER, reduced_reference

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    np.savez(tmp_path / "x.npz", x=np.array([[-600.0, 1, 2], [3, 4, 5]], np.float32))
    with reduced_reference() as reference:
        assert issubclass(autocast.ReferenceRunner, ReferenceRunner)
        assert autocast.ReferenceRunner is not ReferenceRunner
        autocast.ReferenceRunner(model, ["cpu"]).run(None)  # random inputs: ModelOpt's own run
        assert reference == {"runner": "modelopt"}
        ranges = autocast.ReferenceRunner(model, ["cpu"]).run(str(tmp_path / "x.npz"))
        assert reference == {"runner": RUNNER}
        assert (ranges["x"].absmax, ranges["x"].min_val, ranges["y"].absmax, ranges["y"].min_val) == (600, -600, 5, 0)
        assert [o.name for o in model.graph.output] == ["y"] and len(model.graph.node) == 1  # left as it was
    assert autocast.ReferenceRunner is ReferenceRunner
    # TensorRT plugins run only in ModelOpt's session, which registers their library
    plugin = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Adapter", ["x"], ["y"], domain="trt.plugins")], "g", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("trt.plugins", 1)])
    monkeypatch.setattr(ReferenceRunner, "run", lambda self, inputs=None: "ModelOpt's ranges")
    with reduced_reference() as reference:
        assert autocast.ReferenceRunner(plugin, ["cpu"]).run(str(tmp_path / "x.npz")) == "ModelOpt's ranges"
        assert reference == {"runner": "modelopt"}
    # a graph that fits one protobuf only without the added nodes: ModelOpt's runner writes external data
    monkeypatch.setattr(onnx.checker, "MAXIMUM_PROTOBUF", model.ByteSize() + 8)
    with reduced_reference() as reference:
        assert autocast.ReferenceRunner(model, ["cpu"]).run(str(tmp_path / "x.npz")) == "ModelOpt's ranges"
        assert reference == {"runner": "modelopt"} and [o.name for o in model.graph.output] == ["y"]
    monkeypatch.setattr(autocast, "ReferenceRunner", object)  # another ModelOpt's: its own runner runs
    with reduced_reference() as reference:
        assert reference == {"runner": "modelopt"} and autocast.ReferenceRunner is object


def test_mask_iou_treats_two_empty_masks_as_equal_and_a_grown_mask_as_moved():
    a = np.zeros((1, 3, 4, 4), bool)
    b = a.copy()
    a[0, 1, :2] = True
    b[0, 1, :1] = True
    a[0, 2, :] = b[0, 2, :] = True
    assert np.allclose(mask_iou(a, b), [[1.0, 0.5, 1.0]])


def test_fp16_onnx_scores_the_validation_slice_like_fp32(fp16, artefacts, synthetic_data):
    from fisa_rt.data.panoptic import PanopticDataset
    from fisa_rt.evaluation import evaluate_segmenter

    dataset = PanopticDataset(synthetic_data, "val", 128, augment=False)
    scores = {path: evaluate_segmenter(Segmenter.from_engine(path, cache_dir=""), dataset, batch_size=4)
              for path in (artefacts["portable"], fp16)}
    ref, got = scores[artefacts["portable"]], scores[fp16]
    for group in ref:
        for metric in ("pq", "miou"):
            assert abs(got[group][metric] - ref[group][metric]) <= 1.0, (group, metric, got[group], ref[group])


def test_without_modelopt_the_conversion_says_how_to_get_it(monkeypatch, tmp_path):
    import sys

    from fisa_rt.export.mixed_precision import convert_fp16

    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", None)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[tensorrt\]' in fisa-rt's checkout"):
        convert_fp16("x.onnx", str(tmp_path / "y.onnx"), {})
