"""`fisa-rt infer / encode-vocab / eval / bench / inspect` through the real console script, on the ONNX
Runtime and PyTorch backends, and every user error as one line with exit code 2."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fisa_rt import CheckpointError, EngineFailure, InputError, MissingDependencyError
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.backends import Backend, check_engine_compatibility
from fisa_rt.runtime.results import rle_decode

from helpers import one_line_error, run_cli as run, run_infer


@pytest.mark.parametrize("engine_kind", ["ort", "checkpoint"])
def test_infer_writes_overlays_labels_and_panoptic_files(artefacts, tmp_path, engine_kind):
    engine = artefacts["ort"] if engine_kind == "ort" else default_checkpoint()
    out = tmp_path / "out"
    result = run(
        "infer", "--engine", engine, "--vocab", "synthetic", "--out", out, "--batch", 2, "--no-progress", cache=tmp_path
    )
    assert result.returncode == 0, result.stderr
    for scene in sample_images():
        stem = os.path.splitext(os.path.basename(scene))[0]
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.width > Image.open(scene).width  # image + legend strip
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == np.asarray(Image.open(scene)).shape[:2] and labels.max() < 32
        panoptic = json.loads((out / f"{stem}_panoptic.json").read_text())
        assert len(panoptic["categories"]) == 32 and (out / f"{stem}_panoptic.png").is_file()
    assert "FPS" in result.stdout and "pre-process" in result.stdout


def test_semantic_and_instance_tasks_on_one_image(artefacts, tmp_path):
    scene = sample_images()[0]
    result = run_infer(
        artefacts["portable"], scene, tmp_path / "i", classes="red star, blue circle, wavy wall", task="instance",
        cache=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    instances = json.loads((tmp_path / "i" / "scene-1_instances.json").read_text())
    assert isinstance(instances, list)
    for instance in instances:
        assert rle_decode(instance["segmentation"]).shape == np.asarray(Image.open(scene)).shape[:2]
    result = run_infer(
        artefacts["portable"], scene, tmp_path / "s", classes="red star, wavy wall", task="semantic", cache=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "s")) == ["scene-1_labels.png", "scene-1_overlay.png"]


def test_folder_glob_and_video_inputs(artefacts, tmp_path):
    cv2 = pytest.importorskip("cv2")
    folder = os.path.dirname(sample_images()[0])
    assert (
        run_infer(
            artefacts["ort"], os.path.join(folder, "scene-[12].png"), tmp_path / "g", "--vocab", "synthetic",
            task="semantic", cache=tmp_path,
        ).returncode
        == 0
    )
    assert sorted(os.listdir(tmp_path / "g")) == [
        "scene-1_labels.png",
        "scene-1_overlay.png",
        "scene-2_labels.png",
        "scene-2_overlay.png",
    ]
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 128))
    for path in sample_images()[:3]:
        writer.write(np.asarray(Image.open(path).convert("RGB").resize((128, 128)))[:, :, ::-1].copy())
    writer.release()
    result = run_infer(
        artefacts["ort"], video, tmp_path / "v", "--vocab", "synthetic", task="semantic", cache=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len([f for f in os.listdir(tmp_path / "v") if f.endswith("_overlay.png")]) == 3


def test_encode_vocab_then_infer_with_embeddings(artefacts, tmp_path):
    embeddings = tmp_path / "ade.npz"
    result = run(
        "encode-vocab", "--engine", artefacts["portable"], "--vocab", "ade20k-150", "--out", embeddings, cache=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert np.load(embeddings)["embeddings"].shape == (150, 64)
    cached = list((tmp_path / "fisa-rt" / "vocab").glob("*.npz"))
    assert len(cached) == 1 and np.array_equal(np.load(cached[0])["embeddings"], np.load(embeddings)["embeddings"])
    result = run_infer(
        artefacts["ort"], sample_images()[0], tmp_path / "o", "--embeddings", embeddings,
    )
    assert result.returncode == 0, result.stderr
    one_line_error(
        run("encode-vocab", "--engine", artefacts["portable"], "--vocab", "ade20k-150", "--out", embeddings), "exists"
    )
    # embeddings of another text encoder (the checkpoint's file hash differs from the exported encoder's)
    other = tmp_path / "other.npz"
    assert run("encode-vocab", "--engine", default_checkpoint(), "--classes", "a, b", "--out", other).returncode == 0
    one_line_error(
        run("infer", "--engine", artefacts["ort"], "--embeddings", other, "--out", tmp_path / "x"),
        "another text encoder",
    )


def test_eval_bench_and_inspect(artefacts, synthetic_data, tmp_path):
    result = run(
        "eval", "--engine", artefacts["portable"], "--data", synthetic_data, "--limit", 4, "--json", tmp_path / "r.json"
    )
    assert result.returncode == 0, result.stderr
    assert {"all", "seen", "held_out"} <= set(json.loads((tmp_path / "r.json").read_text()))
    # a threshold above every probability keeps no proposal: PQ 0, mIoU unchanged
    result = run(
        "eval",
        "--engine",
        artefacts["portable"],
        "--data",
        synthetic_data,
        "--limit",
        4,
        "--object-threshold",
        1.0,
        "--json",
        tmp_path / "t.json",
    )
    assert result.returncode == 0, result.stderr
    strict, default = json.loads((tmp_path / "t.json").read_text()), json.loads((tmp_path / "r.json").read_text())
    assert strict["all"]["pq"] == 0.0 and strict["all"]["miou"] == default["all"]["miou"]
    result = run(
        "bench",
        "--engine",
        artefacts["ort"],
        "--iterations",
        5,
        "--warmup",
        1,
        "--classes",
        10,
        "--json",
        tmp_path / "b.json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["model_ms"]["p50"] > 0 and report["iterations"] == 5 and "p99" in result.stdout
    result = run("bench", "--engine", default_checkpoint(), "--iterations", 3, "--warmup", 1, "--classes", 5)
    assert result.returncode == 0 and "torch on" in result.stdout, result.stderr
    result = run("inspect", artefacts["fused"])
    assert (
        result.returncode == 0
        and "fisa_rt::MaskAttention" in result.stdout
        and "input  text: float [classesx64]" in result.stdout
        and "once per vocabulary" not in result.stdout  # the fused graph does not run in ONNX Runtime
    )
    result = run("inspect", artefacts["ort"])
    assert result.returncode == 0 and re.search(r"runs \d+ nodes once per vocabulary, not per image", result.stdout)
    result = run("inspect", default_checkpoint())
    assert result.returncode == 0 and "fisa-tiny" in result.stdout
    # the embedded model is FISA with SEVE, not train adapt's default preset (docs/training.md)
    assert "SEVE adapters: after [1, 2]; trained by: stage adapt, trainable simo, steps 600" in result.stdout


def test_inspect_names_each_onnx_artefacts_precision_and_the_backend_that_runs_it(artefacts, tmp_path):
    """The fp16 and Q/DQ builds record their precision in the manifest, the exported graphs none (fp32); the
    header names the backend as --backend does, whether the manifest says "onnx" or "onnxruntime" (the fallback)."""
    import shutil

    from fisa_rt.export.manifest import read_manifest, write_manifest
    from fisa_rt.runtime.inspect import describe

    def inspect(path):
        return "\n".join(describe(str(path)))

    def edited(name, **fields):  # the portable graph, with a manifest as the fp16 or int8 build writes it
        path = tmp_path / name
        shutil.copy(artefacts["portable"], path)
        kept = {k: v for k, v in read_manifest(artefacts["portable"]).items() if k not in ("file", "sha256")}
        write_manifest(str(path), {**kept, "precision": fields.pop("precision"), **fields})
        return inspect(path)

    for artefact in ("portable", "ort"):
        out = inspect(artefacts[artefact])
        assert "image-model for onnxruntime (portable graph)" in out and "\n  precision fp32\n" in out, out
    assert "image-model for tensorrt (fused graph)" in inspect(artefacts["fused"])
    assert "\n  precision fp32\n" in inspect(artefacts["text"])
    out = edited("m.portable.fp16.onnx", precision="fp16", mixed_precision={"fp32_nodes": ["a", "b"], "nodes": 9})
    assert "for onnxruntime" in out and "\n  precision fp16 (ModelOpt AutoCast; 2 of 9 nodes kept fp32)\n" in out
    figures = {"images": 3, "min_prob_cosine": 0.995, "stable_queries": 0.9, "label_agreement": 0.98,
               "min_label_agreement": 0.97, "mask_cosine": 0.999, "max_abs_mask_logit": 0.5,
               "largest_abs_mask_logit": 9.0, "calibrated_on_these_images": False}
    recipe = {"op_types_to_exclude": ["Softmax"], "scopes_kept": ["classifier"], "calibration_method": "max",
              "high_precision": "fp16", "disable_mha_qdq": False}
    quantization = {"precision": "int8", "recipe": recipe, "calibration": {"images": 16},
                    "qdq_nodes": {"QuantizeLinear": 40, "DequantizeLinear": 80}, "parity": figures}
    out = edited("m.portable.int8.qdq.onnx", precision="int8", quantization=quantization)
    assert ("\n  precision int8 (ModelOpt Q/DQ; 40 QuantizeLinear nodes, max calibration on 16 images; kept fp16: "
            "classifier, Softmax)\n  ONNX Runtime check against fp32: 3 images: class-probability cosine >= 0.9950"
            in out), out
    out = edited("m.portable.fp8.qdq.onnx", precision="fp8", quantization={**quantization, "parity": {}})
    assert "precision fp8 (ModelOpt Q/DQ;" in out and "not checked on ONNX Runtime" in out


def test_every_verb_has_help_with_examples():
    for verb in ("infer", "encode-vocab", "eval", "bench", "inspect", "train", "demo"):
        result = run(verb, "--help")
        assert result.returncode == 0 and "example:" in result.stdout, verb


def test_user_errors_are_one_line(artefacts, tmp_path):
    engine = artefacts["ort"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    one_line_error(
        run_infer(engine, tmp_path / "none.png", tmp_path / "o", "--vocab", "synthetic"),
        "is not an image",
    )
    one_line_error(
        run_infer(engine, corrupt, tmp_path / "o", "--vocab", "synthetic"),
        "cannot read image",
    )
    one_line_error(run("infer", "--engine", engine, "--classes", " , ", "--out", tmp_path / "o"), "no class name")
    if __import__("importlib").util.find_spec("cv2"):
        one_line_error(
            run_infer(engine, "7", tmp_path / "o", "--vocab", "synthetic"),
            "cannot open camera 7",
        )
        one_line_error(  # a traceback from inside OpenCV (its index is a C int)
            run_infer(engine, "99999999999", tmp_path / "o", "--vocab", "synthetic"), "is no camera index",
        )
    (tmp_path / "model.xyz").write_bytes(b"x")
    one_line_error(run("infer", "--engine", tmp_path / "model.xyz", "--out", tmp_path / "o"), "cannot tell the backend")
    one_line_error(run("infer", "--engine", tmp_path / "missing.onnx", "--out", tmp_path / "o"), "does not exist")
    one_line_error(
        run("infer", "--engine", engine, "--backend", "tensorrt", "--out", tmp_path / "o"),
        "artefact of the onnxruntime backend",
    )
    from fisa_rt.export.manifest import read_manifest, write_manifest

    plan = tmp_path / "model.engine"  # what a TensorRT build writes, with its manifest; TensorRT is missing here
    plan.write_bytes(b"serialized engine")
    write_manifest(str(plan), {k: v for k, v in read_manifest(engine).items() if k not in ("file", "sha256")})
    one_line_error(run("infer", "--engine", plan, "--vocab", "synthetic", "--out", tmp_path / "o"),
                   "TensorRT is not installed")
    one_line_error(run("infer", "--engine", artefacts["fused"], "--out", tmp_path / "o"), "fused ONNX")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(
        run("infer", "--engine", engine, "--vocab", "synthetic", "--out", blocker / "sub"),
        "cannot create output folder",
    )
    out = tmp_path / "twice"
    assert (
        run_infer(engine, sample_images()[0], out, "--vocab", "synthetic").returncode
        == 0
    )
    one_line_error(
        run_infer(engine, sample_images()[0], out, "--vocab", "synthetic"),
        "exists",
        "--overwrite",
    )
    assert (
        run_infer(engine, sample_images()[0], out, "--vocab", "synthetic", "--overwrite").returncode
        == 0
    )
    wrong = tmp_path / "wrong.npz"
    np.savez(
        wrong,
        embeddings=np.ones((2, 32), np.float32),
        names=np.array(["a", "b"]),
        is_thing=np.array([True, True]),
        text_encoder=np.array("x"),
    )
    one_line_error(
        run("infer", "--engine", engine, "--embeddings", wrong, "--out", tmp_path / "o"), "another text encoder"
    )


def test_an_unknown_backend_is_named_with_the_known_ones_for_a_file_or_a_folder(tmp_path):
    from fisa_rt.runtime.segmenter import Segmenter

    for path in (default_checkpoint(), str(tmp_path)):  # a folder was "holds nothing the bogus backend runs ()"
        with pytest.raises(InputError, match=r"^backend \(--backend\) must be one of \('torch', 'onnxruntime', "):
            Segmenter.from_engine(path, backend="bogus")
    unknown = tmp_path / "model.xyz"
    unknown.write_bytes(b"")
    with pytest.raises(InputError, match=r"cannot tell the backend .*\(or name its backend: backend= / --backend\)"):
        Segmenter.from_engine(str(unknown))


def test_a_folder_with_two_artefacts_of_the_best_kind_is_refused_naming_them(tmp_path, monkeypatch):
    """A second build into the same folder (another --name, another precision) made the name order pick the
    artefact, and nothing said which one ran."""
    from fisa_rt.runtime import backends
    from fisa_rt.runtime.backends import resolve_artefact

    for name in ("a.portable.ort.onnx", "a.portable.onnx", "z.portable.ort.onnx", "z.portable.onnx",
                 "a.fused.fp32.engine", "a.portable.fp16.engine"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr("fisa_rt.export.tensorrt_builder.import_tensorrt", lambda: None)  # as if installed
    for backend, files in ((None, "a.fused.fp32.engine, a.portable.fp16.engine"),
                           ("tensorrt", "a.fused.fp32.engine, a.portable.fp16.engine"),
                           ("onnxruntime", "a.portable.ort.onnx, z.portable.ort.onnx")):
        with pytest.raises(InputError, match=f"holds 2 artefacts .*\\({files}\\): pass the one to run, e.g. "):
            resolve_artefact(str(tmp_path), backend)
    for name in ("z.portable.ort.onnx", "a.fused.fp32.engine"):
        (tmp_path / name).unlink()
    assert resolve_artefact(str(tmp_path)) == str(tmp_path / "a.portable.fp16.engine")
    assert resolve_artefact(str(tmp_path), "onnxruntime") == str(tmp_path / "a.portable.ort.onnx")
    assert backends.resolve_artefact(str(tmp_path / "z.portable.onnx")) == str(tmp_path / "z.portable.onnx")


def test_devices_and_backends_that_do_not_fit_the_artefact_are_refused(artefacts, tmp_path):
    import onnxruntime

    from fisa_rt.runtime.backends import open_backend

    assert open_backend(artefacts["ort"], device="cpu").device.type == "cpu"
    refusals = [
        (artefacts["ort"], {"device": "gpu0"}, "ONNX Runtime runs on cpu, cuda or cuda:N"),
        (default_checkpoint(), {"device": "gpu0"}, "'gpu0' is not a torch device"),
        (artefacts["ort"], {"backend": "torch"}, r"artefact of the onnxruntime backend \(.onnx\); the torch backend "
                                                 "runs .safetensors"),
        (default_checkpoint(), {"backend": "onnxruntime"}, "artefact of the torch backend"),
    ]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        refusals.append((artefacts["ort"], {"device": "cuda"}, "no GPU execution provider.*onnxruntime-gpu"))
    if not torch.cuda.is_available():
        refusals.append((default_checkpoint(), {"device": "cuda:0"}, "torch sees no CUDA GPU"))
    for path, options, message in refusals:
        with pytest.raises(InputError, match=message):
            open_backend(path, **options)
    one_line_error(run("demo", "--engine", artefacts["out"], "--out", tmp_path / "o"),
                   "demo runs a FISA checkpoint (.safetensors)", "fisa-rt infer --engine")
    one_line_error(run("infer", "--engine", artefacts["out"], "--backend", "tensorrt", "--out", tmp_path / "o"),
                   "holds nothing the tensorrt backend runs (.engine, .plan)")


def test_backend_refuses_wrong_text_and_vocabularies_beyond_the_profile():
    backend = Backend()
    backend.manifest = {"embed_dim": 64, "tensorrt": {"profiles": {"classes": {"min": 1, "opt": 50, "max": 100}}}}
    backend.check_text(np.zeros((100, 64), np.float32))
    with pytest.raises(
        InputError,
        match=r"exceed this engine.s profile \(at most 100\); rebuild with .*build_engine.py --classes 1,OPT,101",
    ):
        backend.check_text(np.zeros((101, 64), np.float32))
    with pytest.raises(InputError, match="dimension 32, but this engine takes 64"):
        backend.check_text(np.zeros((3, 32), np.float32))
    with pytest.raises(InputError, match="K >= 1"):
        backend.check_text(np.zeros((0, 64), np.float32))


def test_tensorrt_runs_a_batch_beyond_its_profile_in_parts_and_names_a_shape_it_refuses(monkeypatch):
    """TensorRTBackend.run against a stand-in execution context that keeps to a batch profile of 1..4: each
    input in the engine's declared type, outputs in theirs, TensorRT's stream waiting for the current one."""
    from types import SimpleNamespace

    from fisa_rt.runtime.backends import DeviceInputs, TensorRTBackend

    class Context:
        def __init__(self):
            self.shapes, self.batches = {}, []

        def set_input_shape(self, name, shape):  # TensorRT's answer: False outside the profile
            self.shapes[name] = shape
            return shape[0] <= 4 if name == "image" else True

        def set_tensor_address(self, name, address):
            pass

        def get_tensor_shape(self, name):
            batch, classes = self.shapes["image"][0], self.shapes["text"][0]
            return {"mask_logits": (batch, 10, 8, 8), "class_scores": (batch, 10, classes + 1)}[name]

        def execute_async_v3(self, stream):
            self.batches.append(self.shapes["image"][0])
            return True

    modes = {"image": "input", "text": "input", "mask_logits": "output", "class_scores": "output"}
    types = {"image": "uint8", "text": "fp32", "mask_logits": "fp16", "class_scores": "fp32"}
    backend = object.__new__(TensorRTBackend)
    backend.trt = SimpleNamespace(TensorIOMode=SimpleNamespace(OUTPUT="output"), float32="fp32", float16="fp16",
                                  bfloat16="bf16", int32="int32", int64="int64", int8="int8", uint8="uint8",
                                  bool="bool")
    backend.engine = SimpleNamespace(num_io_tensors=4, get_tensor_name=list(modes).__getitem__,
                                     get_tensor_mode=modes.get, get_tensor_dtype=types.get)
    backend.context, backend.device, backend.applies_seen = Context(), torch.device("cpu"), False
    backend.inputs = DeviceInputs(backend.device)
    order = []
    backend.stream = SimpleNamespace(cuda_stream=0, synchronize=lambda: None,
                                     wait_stream=lambda other: order.append(("wait", other)))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "the current stream")
    backend.context.execute_async_v3 = lambda stream, run=backend.context.execute_async_v3: (
        order.append("execute"), run(stream))[1]
    backend.manifest = {"embed_dim": 64, "tensorrt": {"profiles": {"batch": {"min": 1, "opt": 2, "max": 4}}}}
    raw = backend.run(torch.zeros(10, 3, 32, 32), np.zeros((5, 64), np.float64))  # float64 text: fed as fp32
    assert backend.context.batches == [4, 4, 2]
    assert order[:2] == [("wait", "the current stream"), "execute"] and len(order) == 6
    assert raw.mask_logits.shape == (10, 10, 8, 8) and raw.class_scores.shape == (10, 10, 6)
    assert raw.mask_logits.dtype == torch.float16 and raw.class_scores.dtype == torch.float32
    # a read-only vocabulary (the Segmenter's) crosses to the device once, for every part and every later call
    text = np.zeros((5, 64), np.float32)
    text.setflags(write=False)
    addresses = []
    backend.context.set_tensor_address = lambda name, address: addresses.append(address) if name == "text" else None
    backend.run(torch.zeros(10, 3, 32, 32), text)
    backend.run(torch.zeros(3, 3, 32, 32), text)
    assert len(addresses) == 4 and len(set(addresses)) == 1 and backend.inputs.held["text"][0] is text
    fed = []
    backend.context.set_tensor_address = lambda name, address: fed.append(name)
    types["image"] = "fp32"  # an engine built with --input-dtype float32 is fed float pixels
    seen_types = []
    to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: (seen_types.append(a[1:2]), to(self, *a, **k))[1])
    backend.run(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), np.zeros((5, 64), np.float32))
    assert seen_types[:2] == [(torch.float32,), (torch.float32,)]
    types["class_scores"] = "fp8"
    with pytest.raises(CheckpointError, match="class_scores is of type fp8, which fisa-rt does not feed or read"):
        backend.run(torch.zeros(1, 3, 32, 32), np.zeros((5, 64), np.float32))
    backend.manifest["tensorrt"]["profiles"]["batch"]["max"] = 8  # a manifest the engine disagrees with
    with pytest.raises(InputError, match=r"takes no image of shape \(8, 3, 32, 32\) .*rebuild it"):
        backend.run(torch.zeros(10, 3, 32, 32), np.zeros((5, 64), np.float32))
    types["class_scores"] = "fp32"
    backend.context.execute_async_v3 = lambda stream: False  # TensorRT's log says why; the input passed every check
    with pytest.raises(EngineFailure, match="TensorRT failed to execute the engine") as failed:
        backend.run(torch.zeros(1, 3, 32, 32), np.zeros((5, 64), np.float32))
    assert not isinstance(failed.value, InputError) and failed.value.exit_code == 1


def test_engines_for_another_tensorrt_or_gpu_are_refused_with_the_rebuild_command():
    manifest = {"tensorrt": {"version": "10.3.0", "compute_capability": [8, 7], "precision": "fp16"}}
    check_engine_compatibility(manifest, "10.3.0", (8, 7), "e.engine")
    with pytest.raises(CheckpointError, match="TensorRT 10.3.0, this is TensorRT 10.9.0: rebuild .*build_engine.py"):
        check_engine_compatibility(manifest, "10.9.0", (8, 7), "e.engine")
    with pytest.raises(CheckpointError, match=r"compute capability 8.7 \(Jetson Orin\), this GPU is compute capability "
                       r"9.0 \(H100 / H200 / GH200\): rebuild"):
        check_engine_compatibility(manifest, "10.3.0", (9, 0), "e.engine")
    compatible = {"tensorrt": {**manifest["tensorrt"], "version_compatible": True}}
    check_engine_compatibility(compatible, "10.9.0", (8, 7), "e.engine")
    check_engine_compatibility(compatible, "11.4.0", (8, 7), "e.engine")
    with pytest.raises(CheckpointError, match="built with TensorRT 10.3.0, this is TensorRT 10.2.1: rebuild"):
        check_engine_compatibility(compatible, "10.2.1", (8, 7), "e.engine")  # never on an earlier runtime


def test_a_fused_engine_is_refused_where_the_driver_cannot_read_its_plugins_ptx():
    """TensorRT would fail on the PTX inside the load without naming the driver; an engine moved to a machine
    with the same GPU but an older driver is refused first, in one line."""
    built = {"version": "10.9.0", "compute_capability": [9, 0], "precision": "fp32"}
    fused = {"tensorrt": {**built, "plugin_ptx": {"arch": "sm_90", "gpu": "H100 / H200 / GH200", "ptx_isa": 8.8}}}
    check_engine_compatibility(fused, "10.9.0", (9, 0), "e.engine", driver="12.9")
    check_engine_compatibility(fused, "10.9.0", (9, 0), "e.engine")  # no driver found: TensorRT is the judge
    with pytest.raises(MissingDependencyError, match=r"^e\.engine embeds PTX ISA 8\.8, which this NVIDIA driver "
                       r"\(CUDA 12\.4\) cannot compile: install a driver for CUDA 12\.9 or newer, or build the "
                       r"portable flavour \(--flavour portable\)$"):
        check_engine_compatibility(fused, "10.9.0", (9, 0), "e.engine", driver="12.4")
    check_engine_compatibility({"tensorrt": built}, "10.9.0", (9, 0), "e.engine", driver="12.4")  # portable
    # the version and GPU checks come first: a rebuild there fixes everything
    with pytest.raises(CheckpointError, match="this is TensorRT 10.3.0"):
        check_engine_compatibility(fused, "10.3.0", (9, 0), "e.engine", driver="12.4")


def test_an_engines_checks_need_no_triton():
    """A portable engine runs without Triton, and a fused one is checked before Triton is touched: the driver check
    and the engine checks import no Triton (a process where importing it fails)."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "from fisa_rt.runtime.backends import check_engine_compatibility\n"
        "from fisa_rt.export.driver import driver_cuda\n"
        "import fisa_rt.runtime.inspect\n"
        "fused = {'tensorrt': {'version': '10.9.0', 'compute_capability': [9, 0], 'plugin_ptx': {'ptx_isa': 8.8}}}\n"
        "check_engine_compatibility(fused, '10.9.0', (9, 0), 'e.engine', driver='12.9')\n"
        "driver_cuda()\n"
        "try:\n"
        "    check_engine_compatibility(fused, '10.9.0', (9, 0), 'e.engine', driver='12.4')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    refusal = "MissingDependencyError e.engine embeds PTX ISA 8.8, which this NVIDIA driver (CUDA 12.4) cannot compile"
    assert result.stdout.startswith(refusal), result.stdout


def test_inspect_shows_a_fused_engines_ptx_isa_and_warns_of_a_driver_that_cannot_read_it(tmp_path, monkeypatch):
    """A stand-in TensorRT module and driver: inspect still describes the engine, and says in one warning line why
    it would not load here."""
    import types

    from fisa_rt.export import driver
    from fisa_rt.export.manifest import write_manifest
    from fisa_rt.runtime.inspect import describe

    engine = tmp_path / "fused.engine"
    engine.write_bytes(b"serialized engine")
    write_manifest(str(engine), {"kind": "image-model", "backend": "tensorrt", "flavour": "fused", "tensorrt": {
        "version": "10.9.0", "compute_capability": [9, 0], "precision": "fp32", "plugins": ["MaskPool"],
        "plugin_ptx": {"arch": "sm_90", "gpu": "H100 / H200 / GH200", "ptx_isa": 8.8}}})
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(driver, "driver_cuda", lambda: "12.4")
    lines = describe(str(engine))
    assert any(", plugin PTX sm_90 (ISA 8.8), precision fp32" in line for line in lines), lines
    warnings = [x for x in lines if "warning" in x]
    assert warnings == [f"  warning: {engine} embeds PTX ISA 8.8, which this NVIDIA driver (CUDA 12.4) cannot compile: "
                        "install a driver for CUDA 12.9 or newer, or build the portable flavour (--flavour portable)"]
    monkeypatch.setattr(driver, "driver_cuda", lambda: "12.9")
    assert not [x for x in describe(str(engine)) if "warning" in x]


def test_engine_refusals_name_both_targets_in_one_line():
    """Thor's two names, a desktop engine on a Jetson, a GPU the table does not know, and the two runtimes."""
    thor_cuda12 = {"tensorrt": {"version": "10.13.3", "compute_capability": [10, 1], "precision": "fp32"}}
    with pytest.raises(CheckpointError) as refused:
        check_engine_compatibility(thor_cuda12, "10.13.3", (11, 0), "thor.engine")
    message = str(refused.value)
    assert "\n" not in message and "10.1 (Jetson Thor under CUDA 12.8-12.9)" in message
    assert "11.0 (Jetson Thor (JetPack 7))" in message and "renamed sm_101 -> sm_110 by CUDA 13" in message
    rtx50 = {"tensorrt": {"version": "11.4.0", "compute_capability": [12, 0], "precision": "fp16"}}
    with pytest.raises(CheckpointError, match=r"12.0 \(RTX 50 / RTX PRO Blackwell\), this GPU is compute capability "
                       r"12.1 \(DGX Spark / GB10\): rebuild"):
        check_engine_compatibility(rtx50, "11.4.0", (12, 1), "e.engine")
    with pytest.raises(CheckpointError, match=r"this GPU is compute capability 13.0 \(not in fisa-rt's table\)"):
        check_engine_compatibility(rtx50, "11.4.0", (13, 0), "e.engine")
    rtx = {"tensorrt": {"runtime": "TensorRT-RTX", "version": "1.7.1.116", "compute_capability": None}}
    check_engine_compatibility(rtx, "1.7.1.116", (8, 6), "e.engine", "TensorRT-RTX")  # portable across RTX GPUs
    with pytest.raises(CheckpointError, match="built with TensorRT-RTX 1.7.1.116, this is TensorRT 10.13.3"):
        check_engine_compatibility(rtx, "10.13.3", (8, 6), "e.engine", "TensorRT")


def test_the_builder_takes_tensorrt_rtx_where_tensorrt_is_missing(monkeypatch):
    """TensorRT-RTX is chosen by what is installed, and its missing tensorrt.plugin refuses the fused flavour
    in one line before any work (a stand-in module: the library cannot run here)."""
    import types

    from fisa_rt.export import tensorrt_builder

    rtx = types.ModuleType("tensorrt_rtx")
    rtx.__version__ = "1.7.1.116"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    trt = tensorrt_builder.import_tensorrt()
    assert trt is rtx and tensorrt_builder.runtime_name(trt) == "TensorRT-RTX"
    with pytest.raises(MissingDependencyError, match="TensorRT-RTX 1.7.1.116 does not ship") as refused:
        tensorrt_builder.build_engine("x.onnx", "x.engine", {}, tensorrt_builder.EngineOptions(), fused=True)
    assert "\n" not in str(refused.value) and "--flavour portable" in str(refused.value)


def test_onnx_runtime_s_tensorrt_provider_keeps_its_engines_per_model(tmp_path):
    """Without an engine cache ONNX Runtime's TensorRT EP builds its engines again at every session start; the
    folder is the model file's own (the EP's cache names do not change with the weights)."""
    from types import SimpleNamespace

    from fisa_rt.runtime.backends import onnx_providers

    gpu = SimpleNamespace(__version__="1.32.0", get_available_providers=lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    folder = str(tmp_path / "cache" / "0123abcd")
    cached = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": folder, "trt_timing_cache_enable": "True",
              "trt_timing_cache_path": folder}
    assert onnx_providers(gpu, None, folder) == [("TensorrtExecutionProvider", cached), "CUDAExecutionProvider",
                                                 "CPUExecutionProvider"]
    assert os.path.isdir(folder)
    assert onnx_providers(gpu, "cuda:1", folder) == [
        ("TensorrtExecutionProvider", {"device_id": "1", **cached}), ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider"]
    assert onnx_providers(gpu, "cpu", folder) == ["CPUExecutionProvider"]
    cpu = SimpleNamespace(__version__="1.32.0", get_available_providers=lambda: ["CPUExecutionProvider"])
    assert onnx_providers(cpu, None, str(tmp_path / "unused")) == ["CPUExecutionProvider"]
    assert not os.path.exists(tmp_path / "unused")
    with pytest.raises(InputError, match="no GPU execution provider"):
        onnx_providers(cpu, "cuda", None)


# A review broke each rule below and the tests above still passed: their versions all had a one-digit minor and
# differed in it, and no version-compatible engine met another GPU or runtime.
BUILT = {"tensorrt": {"version": "10.3.0", "compute_capability": [8, 7], "precision": "fp16"}}
COMPATIBLE = {"tensorrt": {**BUILT["tensorrt"], "version_compatible": True}}


def test_a_patch_release_is_another_tensorrt():
    with pytest.raises(CheckpointError):
        check_engine_compatibility(BUILT, "10.3.1", (8, 7), "e.engine")


def test_version_compatible_runs_on_10_13_after_10_3():  # versions compared as numbers: "10.13" < "10.3"
    check_engine_compatibility(COMPATIBLE, "10.13.3", (8, 7), "e.engine")


def test_version_compatible_is_not_hardware_compatible():  # the builder sets no hardware compatibility
    with pytest.raises(CheckpointError, match="compute capability"):
        check_engine_compatibility(COMPATIBLE, "10.9.0", (9, 0), "e.engine")


def test_version_compatible_never_crosses_runtimes():
    rtx = {"tensorrt": {"runtime": "TensorRT-RTX", "version": "1.7.1.116", "compute_capability": None,
                        "version_compatible": True}}
    with pytest.raises(CheckpointError, match="built with TensorRT-RTX"):
        check_engine_compatibility(rtx, "10.13.3", (8, 6), "e.engine", "TensorRT")


def test_a_manifest_without_sha256_is_refused(tmp_path):
    from fisa_rt.export.manifest import manifest_path, read_checked_manifest, write_manifest

    art = tmp_path / "m.onnx"
    art.write_bytes(b"model")
    write_manifest(str(art), {"kind": "image-model", "image_size": 64, "embed_dim": 64, "templates": "vild",
                              "context_length": 32})
    read_checked_manifest(str(art))
    with open(manifest_path(str(art))) as f:
        doc = json.load(f)
    del doc["sha256"]  # a manifest without one was trusted for any file
    with open(manifest_path(str(art)), "w") as f:
        json.dump(doc, f)
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        read_checked_manifest(str(art))
