"""``fisa-rt export-triton`` without a server: every config.pbtxt parses with Triton's own schema
(tritonclient's model_config_pb2) and agrees with the artefact it serves; the fisa_python model's request
handling batches only what batching cannot change (FC-CLIP's padding: one canvas per batch)."""

import os

import numpy as np
import pytest

from fisa_rt.errors import InputError
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.serving.handler import Handler, Limits, Request

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install -e '.[test]'")

from fisa_rt.serving import repository  # noqa: E402


def test_exported_repository_parses_and_matches_the_onnx_graphs(artefacts, tmp_path):
    import onnx

    out = tmp_path / "repo"
    lines = repository.export_repository(artefacts["out"], str(out), None, repository.PythonModelOptions())
    assert sorted(p.name for p in out.iterdir()) == ["fisa", "fisa_image", "fisa_post", "fisa_pre", "fisa_python",
                                                     "fisa_text", "fisa_vocab"]
    assert sum("parses with Triton's schema" in line for line in lines) == 7 and "fisa: every step" in lines[-1]
    ensemble = repository.read_config(str(out / "fisa" / "config.pbtxt"))
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "fisa_pre", "fisa_text", "fisa_vocab", "fisa_image", "fisa_post"]
    image = repository.read_config(str(out / "fisa_image" / "config.pbtxt"))
    # the portable graph, not the ONNX Runtime-optimised one made for this machine's CPU: the server is elsewhere
    served = out / "fisa_image" / "1" / "model.onnx"
    assert served.read_bytes() == open(artefacts["portable"], "rb").read()
    graph = onnx.load(str(served), load_external_data=False).graph
    assert not [n.op_type for n in graph.node if n.domain == "com.microsoft"]
    assert [i.name for i in image.input] == [i.name for i in graph.input]
    assert [o.name for o in image.output] == [o.name for o in graph.output]
    assert image.backend == "onnxruntime" and image.max_batch_size == 0
    assert image.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    python = repository.read_config(str(out / "fisa_python" / "config.pbtxt"))
    assert python.backend == "python" and all(i.allow_ragged_batch for i in python.input)
    assert python.dynamic_batching.max_queue_delay_microseconds > 0
    # instances x threads <= cores by default
    assert python.instance_group[0].count * int(python.parameters["threads"].string_value) <= max(
        2, repository.PythonModelOptions().instances * 2)


def test_a_config_that_disagrees_with_its_graph_is_refused(artefacts, tmp_path):
    out = tmp_path / "repo"
    repository.export_repository(artefacts["out"], str(out), None, repository.PythonModelOptions())
    path = out / "fisa_image" / "config.pbtxt"
    config = repository.read_config(str(path))
    config.input[1].dims[1] = 512  # the text width the graph does not take
    repository.write_config(str(path.parent), config)
    with pytest.raises(InputError, match="differ from what it serves"):
        repository.check_repository(str(out), artefacts["portable"])
    path.unlink()
    repository.export_repository(artefacts["out"], str(tmp_path / "again"), None, repository.PythonModelOptions())
    post = tmp_path / "again" / "fisa_post" / "config.pbtxt"
    config = repository.read_config(str(post))
    config.input[3].data_type = config.input[1].data_type  # mask_logits as strings: the wiring check catches it
    repository.write_config(str(post.parent), config)
    with pytest.raises(InputError, match="ensemble step fisa_post"):
        repository.check_repository(str(tmp_path / "again"), artefacts["portable"])
    path.write_text("name: 'fisa_image' input { nme: 'x' }")
    with pytest.raises(InputError, match="not a Triton model config"):
        repository.check_repository(str(out), artefacts["portable"])


def test_engine_profiles_are_carried_into_the_config():
    manifest = {"tensorrt": {"profiles": {"classes": {"min": 1, "opt": 133, "max": 1203},
                                          "synonyms": {"min": 1, "opt": 1, "max": 8}}}, "synonyms": "max"}
    signature = {"input": {"text": ("TYPE_FP32", (-1, -1, 64))}, "output": {"class_scores": ("TYPE_FP16", (-1,))}}
    config = repository.graph_model_config("fisa_image", signature, True, manifest)
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.parameters["classes_profile"].string_value == "1,133,1203"
    assert config.parameters["synonyms_profile"].string_value == "1,1,8"
    assert config.parameters["synonyms"].string_value == "max"


@pytest.fixture(scope="module")
def checkpoint_fcclip(tmp_path_factory):
    """FC-CLIP's padding rule (resize.pad "divisible") on a tiny random model."""
    import torch
    from test_segmenter_padding import fcclip_tiny

    from fisa_rt.checkpoint import save_checkpoint
    from fisa_rt.model import create_model

    torch.manual_seed(0)
    model = create_model(fcclip_tiny()).eval()
    path = str(tmp_path_factory.mktemp("pad") / "fcclip-tiny.safetensors")
    save_checkpoint(path, model, vocabulary=["cat", "grass"], is_thing=[True, False])
    return path


def test_bad_requests_fail_alone_and_batches_hold_one_canvas(checkpoint_fcclip):
    segmenter = Segmenter.from_engine(checkpoint_fcclip, device="cpu", cache_dir="", threads=1)
    fed = []
    run = segmenter.backend.run
    segmenter.backend.run = lambda images, *args: (fed.append(tuple(images.shape)), run(images, *args))[1]
    handler = Handler(segmenter, Limits(max_pixels=10_000))
    rng = np.random.default_rng(0)
    names = np.array([[b"cat", b"grass"]], dtype=np.object_)
    images = [rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (40, 100), (52, 68))]
    requests = [Request(images[0], names, {}), Request(images[1], names, {}),
                Request(np.zeros((1, 200, 100, 3), np.uint8), names, {}), Request(images[2], names, {})]
    outcomes = handler.execute(requests)
    assert isinstance(outcomes[2], InputError) and "pixels" in str(outcomes[2])
    assert sorted(fed) == [(1, 3, 64, 128), (2, 3, 64, 96)]  # 50x70 and 52x68 share a canvas; 40x100 alone
    fed.clear()
    for request, outcome in zip(requests[:2] + requests[3:], outcomes[:2] + outcomes[3:]):
        alone = handler.execute([request])[0]
        assert all(np.array_equal(alone[k], outcome[k]) for k in outcome)


def test_a_batch_too_big_for_the_memory_runs_one_request_at_a_time_and_a_bug_is_raised(checkpoint_fcclip):
    from fisa_rt.errors import OutOfMemory

    segmenter = Segmenter.from_engine(checkpoint_fcclip, device="cpu", cache_dir="", threads=1)
    run, fed = segmenter.backend.run, []

    def short_of_memory_past(limit):
        def bounded(images, *args):
            fed.append(images.shape[0])
            if images.shape[0] > limit:  # the text torch's CPU allocator gives
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                   "allocate memory: you tried to allocate 67634176 bytes. Error code 12 (Cannot "
                                   "allocate memory)")
            return run(images, *args)
        return bounded

    handler = Handler(segmenter, Limits(max_pixels=10_000))
    names = np.array([[b"cat", b"grass"]], dtype=np.object_)
    image = np.random.default_rng(0).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    requests = [Request(image, names, {})] * 3
    alone = handler.execute(requests[:1])[0]
    segmenter.backend.run = short_of_memory_past(1)
    outcomes = handler.execute(requests)
    assert fed == [3, 1, 1, 1]
    assert all(np.array_equal(outcome[k], alone[k]) for outcome in outcomes for k in alone)
    segmenter.backend.run = short_of_memory_past(0)
    outcomes = handler.execute(requests)
    assert all(isinstance(o, OutOfMemory) and "PyTorch could not allocate 64.5 MiB" in str(o) for o in outcomes)

    def broken(images, *args):
        raise RuntimeError("a bug")

    segmenter.backend.run = broken
    with pytest.raises(RuntimeError, match="a bug"):
        handler.execute(requests)

    def broken_in_batches(images, *args):
        fed.append(images.shape[0])
        if images.shape[0] > 1:
            raise IndexError("a bug only batches meet")
        return run(images, *args)

    fed.clear()
    segmenter.backend.run = broken_in_batches
    with pytest.raises(IndexError, match="only batches meet"):  # raised, not hidden by running each alone
        handler.execute(requests)
    assert fed == [3]


def test_short_of_memory_is_unavailable_a_bad_request_an_invalid_argument_an_engine_failure_internal(tmp_path):
    import importlib.util
    import json
    import shutil
    from types import SimpleNamespace

    from fisa_rt import serving
    from fisa_rt.errors import EngineFailure, OutOfMemory

    # the model file as the server loads it: beside the environment.json the repository writes
    shutil.copy(os.path.join(os.path.dirname(serving.__file__), "triton_model.py"), tmp_path / "model.py")
    (tmp_path / "environment.json").write_text(json.dumps({}))
    spec = importlib.util.spec_from_file_location("fisa_model_under_test", tmp_path / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class TritonError:
        INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

        def __init__(self, message, code):
            self.message, self.code = message, code

    model = module.TritonPythonModel()
    model.pb_utils = SimpleNamespace(TritonError=TritonError, InferenceResponse=lambda output_tensors, error: error)
    assert model._response(None, OutOfMemory("out of memory (x)")).code == "UNAVAILABLE"
    assert model._response(None, InputError("bad")).code == "INVALID_ARG"
    assert model._response(None, EngineFailure("TensorRT failed to execute the engine")).code == "INTERNAL"


def test_the_ensemble_steps_return_what_local_segment_returns(artefacts):
    """fisa_pre -> fisa_text -> fisa_vocab -> fisa_image -> fisa_post, with ONNX Runtime where the server runs
    fisa_text and fisa_image: the result equals Segmenter.segment on the same artefact."""
    import onnxruntime as ort
    from PIL import Image

    from fisa_rt.runtime.assets import sample_images
    from fisa_rt.serving import protocol
    from fisa_rt.serving.stages import Stages

    artefact, names = artefacts["ort"], ["red star", "blue circle, disc", "wavy wall"]
    image = np.asarray(Image.open(sample_images()[0]).convert("RGB"))
    stages = Stages(artefact)
    pre = stages.pre(image, names)
    per_prompt = stages.segmenter.text_encoder.session.run(None, {"tokens": pre["tokens"]})[0]
    vocabulary = stages.vocabulary(names, per_prompt)
    image_session = ort.InferenceSession(artefact, providers=["CPUExecutionProvider"])
    mask_logits, class_scores = image_session.run(["mask_logits", "class_scores"],
                                                  {"image": pre["canvas"], **vocabulary})
    outputs = stages.post(image, names, pre["content"], mask_logits, class_scores, "panoptic", "full", 0)
    local = Segmenter.from_engine(artefact, cache_dir="", threads=1)
    local.set_vocabulary(names)
    want = local.segment(image)
    body = __import__("json").loads(outputs[protocol.RESULT][0])
    assert np.array_equal(outputs[protocol.SEMANTIC][0], want.semantic)
    assert body["segments"] == want.segments()


def test_thread_settings_reach_torch_and_onnxruntime(artefacts):
    import torch

    from fisa_rt.runtime.threads import available_cores, resolve_threads

    before = torch.get_num_threads()
    try:
        segmenter = Segmenter.from_engine(artefacts["ort"], cache_dir="", threads=1)
        assert torch.get_num_threads() == 1
        options = segmenter.backend.session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert resolve_threads(None) <= available_cores()
        for threads in (0, 10 ** 30):  # 10 ** 30 overflowed inside torch.set_num_threads
            with pytest.raises(InputError, match="threads must be an integer from 1 to 1024"):
                Segmenter.from_engine(artefacts["ort"], threads=threads)
    finally:
        torch.set_num_threads(before)


# ---- nothing lost, nothing half-written: the CLI's guarantees for a repository ----------------------------------

def _export(*flags):
    from fisa_rt.cli import main

    return main(["export-triton", *map(str, flags)])


def _one_line(capsys, code, *phrases):
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("fisa-rt: error:"), (code, err)
    assert all(phrase in err for phrase in phrases), err


def _tree(folder):
    """Every file under ``folder`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_unusable_out_is_one_line_and_a_failed_export_leaves_no_folder(tmp_path, capsys, monkeypatch):
    from fisa_rt.errors import MissingDependencyError
    from fisa_rt.runtime.assets import default_checkpoint

    checkpoint, repo = default_checkpoint(), tmp_path / "repo"
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    _one_line(capsys, _export("--engine", checkpoint, "--out", blocker), str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "mine"

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "makedirs", read_only)
        _one_line(capsys, _export("--engine", checkpoint, "--out", repo), "Read-only file system")
    text = tmp_path / "t.onnx"
    text.write_text("not a graph")
    _one_line(capsys, _export("--engine", text, "--out", repo), "t.onnx")
    assert not repo.exists()
    with pytest.raises(SystemExit) as exit_:
        _export("--engine", checkpoint, "--out", repo, "--device", "foo")
    assert exit_.value.code == 2 and "invalid choice: 'foo'" in capsys.readouterr().err and not repo.exists()
    # each wrote a repository the server could not start (exit 0 before)
    _one_line(capsys, _export("--engine", checkpoint, "--out", repo, "--backend", "onnxruntime"),
              "artefact of the torch backend")
    _one_line(capsys, _export("--engine", checkpoint, "--out", repo, "--numpy1", blocker), "is not a folder")
    with pytest.raises(SystemExit) as exit_:
        _export("--engine", checkpoint, "--out", repo, "--instances", "1000000000")
    assert exit_.value.code == 2 and "must be <= 256" in capsys.readouterr().err and not repo.exists()

    def missing():
        raise MissingDependencyError("Triton's model-config schema comes with tritonclient")

    monkeypatch.setattr(repository, "model_config_pb2", missing)
    _one_line(capsys, _export("--engine", checkpoint, "--out", repo), "tritonclient")
    assert not repo.exists()


def test_every_model_folder_is_checked_before_any_is_written(artefacts, tmp_path, capsys):
    out = tmp_path / "repo"
    (out / "fisa").mkdir(parents=True)  # an empty folder holds nothing to lose: it is taken
    (out / "fisa" / "notes.txt").write_text("mine")
    _one_line(capsys, _export("--engine", artefacts["out"], "--out", out), "fisa exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["fisa"] and [p.name for p in (out / "fisa").iterdir()] == ["notes.txt"]


def test_overwrite_replaces_each_model_wholly_and_a_failure_midway_keeps_the_old_one(artefacts, tmp_path, capsys,
                                                                                     monkeypatch):
    out = tmp_path / "repo"
    assert _export("--engine", artefacts["out"], "--out", out) == 0
    (out / "fisa_python" / "1" / "stale.txt").write_text("from an earlier export")
    (out / "other" / "1").mkdir(parents=True)  # someone else's model: never touched
    (out / "other" / "config.pbtxt").write_text("name: 'other'")
    other = _tree(out / "other")
    assert _export("--engine", artefacts["portable"], "--out", out, "--overwrite") == 0
    served = sorted(p.name for p in (out / "fisa_python" / "1").iterdir())
    assert "stale.txt" not in served and os.path.basename(artefacts["portable"]) in served, served
    assert _tree(out / "other") == other
    before = _tree(out)

    def broken(folder, config, source):
        raise OSError(28, "No space left on device", folder)

    with monkeypatch.context() as patch:  # fisa_image fails after fisa_python is written
        patch.setattr(repository, "_graph_folder", broken)
        _one_line(capsys, _export("--engine", artefacts["out"], "--out", out, "--overwrite"), "No space left")
    assert _tree(out) == before  # and no hidden staging folder
    renames = []

    def rename(src, dst):
        renames.append(dst)
        if len(renames) == 4:  # fisa_python swapped, fisa_image moved aside: both undone
            raise OSError(5, "Input/output error", dst)
        os.replace(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    _one_line(capsys, _export("--engine", artefacts["out"], "--out", out, "--overwrite"), "Input/output error")
    assert _tree(out) == before


def test_models_are_staged_beside_the_repository_where_a_server_never_sees_them(artefacts, tmp_path, monkeypatch):
    # tritonserver 2.51 takes a hidden folder in the repository for a model and, at start, fails with "failed to
    # load all models" (docs/design.md): while the export writes, the repository holds only what it held before
    out = tmp_path / "repo"
    out.mkdir()
    seen = []
    graph_folder = repository._graph_folder

    def watched(folder, config, source):
        seen.append((sorted(os.listdir(out)), sorted(os.listdir(tmp_path))))
        graph_folder(folder, config, source)

    monkeypatch.setattr(repository, "_graph_folder", watched)
    assert _export("--engine", artefacts["out"], "--out", out) == 0
    assert seen and all(inside == [] for inside, _ in seen)
    assert all(any(".fisa-tmp" in name for name in beside) for _, beside in seen)
    assert sorted(os.listdir(tmp_path)) == ["repo"]  # the staging folder is gone again
    assert not any(name.startswith(".") for name in os.listdir(out))


def test_a_repository_on_a_file_system_of_its_own_stages_inside_itself(tmp_path, monkeypatch):
    out = tmp_path / "repo"
    out.mkdir()
    assert repository.staging_parent(str(out)) == str(tmp_path)
    stat = os.stat

    class Mounted:  # the repository is a mount point: its parent is another device
        def __init__(self, path):
            self.st_dev = stat(path).st_dev + (1 if os.fspath(path) == str(out) else 0)

    monkeypatch.setattr(os, "stat", Mounted)
    assert repository.staging_parent(str(out)) == str(out)


def test_python_model_config_batches():
    options = repository.PythonModelOptions()
    config = repository.python_model_config("model.safetensors", None, options)
    assert config.max_batch_size == options.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == options.queue_delay_us > 0
