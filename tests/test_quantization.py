"""int8 Q/DQ ONNX (ModelOpt, ``export/quantization.py``) written without TensorRT and checked on ONNX Runtime
against fp32, as the fp16 one is (tests/test_mixed_precision.py).

One int8 build of the embedded model, calibrated on the 24 synthetic train scenes of the tests' dataset (the
build warns that it is few), serves the module. Parity is judged on the 3 scikit-image photographs and the 4
bundled scenes, never calibrated on (``export/parity.py``). The bounds are regression bounds around what
``RECIPE`` measures here (docs/deploy.md, "int8"). Measured 2026-12-05: minimum class-probability cosine
0.9996 (stable-mask queries), label agreement 98.7 % (worst image 95.0 %), mask-logit cosine 0.99988, max
|delta logit| 3.2 of 74.6, 95 % of the queries with a stable mask (the recipe before, every CLIP block in
int8 and calibrated on 2 bundled scenes: 0.991 / 88.7 % / 0.9982 / 5.9 / 71 %). PQ and mIoU on the tests' 8-scene
validation slice (23 segments: one segment moves PQ by ~4 points) within 5 points (measured: PQ +3.4, mIoU
0.0); on 100 scenes, with 128 calibration images, scripts/precision-table.py measures 0.3 / 0.05.
"""

import contextlib
import io
import os
import re
import sys
import warnings

import numpy as np
import onnx
import pytest

from fisa_rt import InputError, MissingDependencyError
from fisa_rt.export import parity, qdq_rounding, quantization
from fisa_rt.errors import FisaWarning
from fisa_rt.export.build_engine import main
from fisa_rt.export.manifest import read_manifest, sha256_file
from fisa_rt.runtime.assets import sample_images
from fisa_rt.runtime.segmenter import Segmenter

from test_export import _photos, output_dims

pytest.importorskip("modelopt", reason="ModelOpt is in the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def int8(tmp_path_factory, synthetic_data):
    out = str(tmp_path_factory.mktemp("int8"))
    log, err = io.StringIO(), io.StringIO()
    calibration = os.path.join(synthetic_data, "images", "train")
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(err):
        assert main(["--out", out, "--precision", "int8", "--calibration", calibration]) == 0
    files = {f.split(".", 1)[1]: os.path.join(out, f) for f in os.listdir(out) if f.endswith(".onnx")}
    return {"out": out, "log": log.getvalue(), "err": err.getvalue(), **files}


def test_int8_build_writes_the_qdq_onnx_and_checks_it_without_tensorrt(int8):
    qdq = int8["portable.int8.qdq.onnx"]
    log = int8["log"]
    assert "no TensorRT engine: TensorRT is not installed" in log
    assert "warning: calibrating on 24 images" in int8["err"]  # fewer than 100: said, not refused
    assert f"--onnx={qdq}" in log and "--stronglyTyped" in log and ".portable.int8.engine" in log
    assert "ONNX Runtime check against fp32 on the bundled scenes:" in log  # none calibrated on
    manifest = read_manifest(qdq)
    assert manifest["precision"] == "int8"
    assert manifest["source_onnx"]["sha256"] == sha256_file(int8["portable.onnx"])
    record = manifest["quantization"]
    assert record["recipe"] == quantization.RECIPE.record()
    assert record["calibration"]["images"] == 24
    assert record["calibration"]["classes"] == len(manifest["training_vocabulary"]["names"])
    assert record["parity"]["images"] == len(sample_images()) and not record["parity"]["calibrated_on_these_images"]
    model = onnx.load(qdq)
    assert model.ir_version <= 10  # ModelOpt's: still what TensorRT 10.3 and ONNX Runtime 1.18 read (test_export)
    assert record["qdq_nodes"]["QuantizeLinear"] == sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 100
    # the mask generator's matrix products compute in int8; what the recipe keeps high precision, by op type
    # and by module role (the CLIP encoder's blocks, the classifier), reads no dequantised tensor
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    weights = {i.name for i in model.graph.initializer}
    part = {name: [n for n in products if quantization.in_scope(n, scope, weights)]
            for name, scope in quantization.SCOPES.items()}
    assert sum(bool(dequantized & set(n.input)) for n in part["mask_generator"]) > len(part["mask_generator"]) / 2
    kept = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")] + [
        n for name in quantization.RECIPE.scopes_kept for n in part[name]]
    assert {"MatMul", "LayerNormalization", "Softmax"} <= {n.op_type for n in kept}
    assert not any(dequantized & set(n.input) for n in kept)
    assert record["kept_products_in_int8"] == []  # the build's own record of the same check
    # ModelOpt's warnings (export/modelopt_log.py): each once, as the script's own lines on stderr, and in the
    # manifest; none in ModelOpt's own timestamped format, which printed each twice
    assert all(int8["err"].count(f"build_engine.py: warning: ModelOpt: {m}\n") == 1 for m in record["modelopt_log"])
    assert int8["err"].count("warning: ModelOpt: ") == len(record["modelopt_log"])
    assert "[modelopt]" not in log + int8["err"]
    # the interface is unchanged: uint8 image, fp32 text in; fp32 outputs
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert output_dims(model) == output_dims(onnx.load(int8["portable.onnx"]))  # numbers where fixed (test_export)


def test_int8_onnx_stays_within_its_measured_bounds_on_images_it_was_not_calibrated_on(int8):
    portable = Segmenter.from_engine(int8["portable.onnx"], backend="onnxruntime", cache_dir="")
    photos = _photos(portable.backend.image_size).numpy()[:3]
    scenes = quantization.runtime_images(portable, sample_images())  # calibrated on synthetic train scenes
    text = read_text(int8)
    figures = parity.check_onnx(int8["portable.onnx"], int8["portable.int8.qdq.onnx"],
                                {"image": np.concatenate([photos, scenes]), "text": text})
    assert figures["min_prob_cosine"] >= 0.99 and figures["label_agreement"] >= 0.95, figures
    assert figures["mask_cosine"] >= 0.999 and figures["max_abs_mask_logit"] <= 6.0, figures
    assert figures["stable_queries"] >= 0.85, figures


def test_on_a_truncating_onnxruntime_the_int8_graph_names_the_fix(int8, monkeypatch):
    """ONNX Runtime < 1.30 (Python 3.10's newest is 1.23.2) rounds float16 QuantizeLinear toward zero
    (export/qdq_rounding.py): the runtime says so in one line; the fp32 graph, with nothing quantised, does not."""
    monkeypatch.setattr(qdq_rounding, "onnxruntime_truncates", lambda: True)
    with pytest.warns(FisaWarning, match=r"rounds float16 QuantizeLinear toward zero.*onnxruntime>=1\.30\.0"):
        Segmenter.from_engine(int8["portable.int8.qdq.onnx"], backend="onnxruntime", cache_dir="")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FisaWarning)
        Segmenter.from_engine(int8["portable.onnx"], backend="onnxruntime", cache_dir="")


def read_text(int8) -> np.ndarray:
    from fisa_rt.checkpoint import load_model
    from fisa_rt.runtime.assets import default_checkpoint

    model, info = load_model(default_checkpoint())
    return model.encode_vocabulary(info.vocabulary).numpy()


def test_int8_onnx_scores_the_validation_slice_like_fp32(int8, synthetic_data):
    from fisa_rt.data.panoptic import PanopticDataset
    from fisa_rt.evaluation import evaluate_segmenter

    dataset = PanopticDataset(synthetic_data, "val", 128, augment=False)
    ref, got = (evaluate_segmenter(Segmenter.from_engine(int8[k], cache_dir=""), dataset, batch_size=4)
                for k in ("portable.onnx", "portable.int8.qdq.onnx"))
    for metric in ("pq", "miou"):  # over all classes: the per-group slices hold 5-15 segments each
        assert abs(got["all"][metric] - ref["all"][metric]) <= 5.0, (metric, got["all"], ref["all"])


def test_calibration_images_are_resized_and_padded_as_the_runtime_does(int8, tmp_path):
    from PIL import Image

    wide = np.zeros((40, 160, 3), np.uint8)
    wide[:] = (200, 10, 10)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    segmenter = Segmenter.from_engine(int8["portable.onnx"], backend="onnxruntime", cache_dir="")
    (image,) = quantization.runtime_images(segmenter, [str(tmp_path / "wide.png")])
    assert image.shape == (3, 128, 128) and image.dtype == np.uint8
    assert (image[:, :32] == np.array([200, 10, 10])[:, None, None]).all()  # 40 x 160 -> 32 x 128 at the top
    assert (image[:, 32:] == np.array(segmenter.pad_colour)[:, None, None]).all()  # then the runtime's padding


def test_kept_parts_include_the_nodes_the_exporter_leaves_unnamed():
    """fcclip-convnext-l's exported graph names its depthwise convolutions ``node_Conv_157``, no module path:
    they are kept by the weights they read, and only those whose weights are the kept part's."""
    from onnx import helper

    weights = ["model.backbone.visual.trunk.stages.0.blocks.0.conv_dw.weight",
               "model.backbone.visual.trunk.stem.0.weight", "model.mask_generator.layers.0.cross.out_proj.weight",
               "model.classifier.mask_q_proj.0.weight", "model.backbone.visual.transformer.resblocks.3.mlp.w"]
    nodes = [helper.make_node("Conv", ["x", weights[0]], ["a"], name="node_Conv_157"),
             helper.make_node("Conv", ["x", weights[1]], ["b"], name="node_Conv_156"),  # the stem: not a block
             helper.make_node("Gemm", ["x", weights[2]], ["c"], name="node_Gemm_212"),
             helper.make_node("MatMul", ["x", weights[3]], ["d"], name="node_MatMul_9"),
             helper.make_node("MatMul", ["x", weights[4]], ["e"], name="node_MatMul_10"),
             helper.make_node("MatMul", ["x", "y"], ["f"], name="/model/backbone/stages.2/blocks/blocks.1/MatMul"),
             helper.make_node("MatMul", ["x", "y"], ["g"], name="/model/mask_generator/layers.0/MatMul")]
    graph = helper.make_graph(nodes, "g", [], [], [helper.make_tensor(w, onnx.TensorProto.FLOAT, [1], [0.0])
                                                  for w in weights])
    patterns = quantization.nodes_to_exclude(graph, ("clip_encoder", "classifier"))
    excluded = {n.name for n in nodes if any(re.match(p, n.name) for p in patterns)}  # as ModelOpt matches
    assert excluded == {"node_Conv_157", "node_MatMul_9", "node_MatMul_10",
                        "/model/backbone/stages.2/blocks/blocks.1/MatMul"}
    assert quantization.nodes_to_exclude(graph, ()) == []
    with pytest.raises(InputError, match="unknown model parts"):
        quantization.QuantRecipe(scopes_kept=("clip",))


def test_every_calibration_step_sees_the_whole_vocabulary():
    calibration = quantization.CalibrationSet(np.zeros((19, 3, 8, 8), np.uint8), np.ones((5, 4), np.float32))
    feeds = calibration.feeds(step=8)
    assert [len(f["image"]) for f in feeds] == [8, 8, 3] and all(f["text"].shape == (5, 4) for f in feeds)


def test_calibration_files_take_a_folder_or_glob_and_the_first_n(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    with pytest.warns(UserWarning, match="fewer than 100"):
        assert quantization.calibration_files(str(tmp_path), 2) == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    with pytest.warns(UserWarning):
        assert len(quantization.calibration_files(str(tmp_path / "*.png"), 256)) == 3
    with pytest.warns(UserWarning, match="bundled scenes"):
        assert quantization.calibration_files(None, 256) == list(sample_images())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        quantization.calibration_files(str(tmp_path / "empty"), 2)
    with pytest.raises(InputError, match="calibration-count"):
        quantization.calibration_files(str(tmp_path), 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--flavour", "fused"], "portable flavour"),
        (["--calibration", "no/such/*.png"], "not an image, folder, glob"),
        (["--calibration-vocab", "no-such-vocabulary"], "not a shipped vocabulary"),
    ],
)
def test_bad_int8_options_fail_before_the_export(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path / "b"), "--precision", "int8", *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_without_modelopt_the_quantisation_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", None)
    calibration = quantization.CalibrationSet(np.zeros((1, 3, 8, 8), np.uint8), np.ones((1, 4), np.float32))
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[tensorrt\]' in fisa-rt's checkout"):
        quantization.quantize_onnx("x.onnx", str(tmp_path / "y.onnx"), "int8", calibration)
