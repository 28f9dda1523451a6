"""ONNX Runtime sessions fail once and print nothing (fisa_rt/onnxruntime_session.py), and a backend falls back
from a failing GPU provider to the providers after it, when a session is made or at a run, in one warning line
(runtime/backends.py: ``_SessionMaker``, ``OnnxRuntimeBackend._fell_back``)."""

import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from fisa_rt.errors import CheckpointError, FisaWarning
from fisa_rt.onnxruntime_session import inference_session
from fisa_rt.runtime.backends import OnnxRuntimeBackend, _provider_name, _SessionMaker

from helpers import random_text

TRT = ("TensorrtExecutionProvider", {"trt_engine_cache_enable": "True"})
REST = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def retried(monkeypatch):
    """Each try ONNX Runtime makes at a session fails with a RuntimeError, the kind its own fallback retries (an
    execution provider's error, a thread it could not start); returns the tries' providers."""
    from onnxruntime.capi import onnxruntime_inference_collection as collection

    tries = []

    def fail(self, providers, *args, **kwargs):
        tries.append(list(providers))
        raise RuntimeError("pthread_create failed, error code: 11 error msg: Resource temporarily unavailable")

    monkeypatch.setattr(collection.InferenceSession, "_create_inference_session", fail)
    return tries


def _model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# 1.18-1.22 read no enable_fallback (fisa_rt/onnxruntime_session.py)
MAKES_WITHOUT_FALLBACK = tuple(int(p) for p in onnxruntime.__version__.split(".")[:2]) >= (1, 23)
NO_FALLBACK = pytest.mark.skipif(not MAKES_WITHOUT_FALLBACK, reason="ONNX Runtime < 1.23 retries and prints")


@NO_FALLBACK
def test_a_failed_session_is_tried_once_and_prints_nothing(retried, capfd):
    with pytest.raises(RuntimeError, match="pthread_create failed"):
        inference_session(_model())
    # ONNX Runtime's own fallback printed four lines to stdout ("EP Error ...") and tried the CPU provider again
    assert retried == [["CPUExecutionProvider"]] and capfd.readouterr().out == ""


class Made:
    """What the stand-ins of onnxruntime.InferenceSession make."""

    def __init__(self, providers):
        self.providers = [_provider_name(p) for p in providers]

    def disable_fallback(self):
        pass


class Recorder:
    """onnxruntime.InferenceSession's stand-in: fails where ``fails(providers)`` gives an exception."""

    def __init__(self, fails):
        self.fails, self.calls = fails, []

    def __call__(self, source, options=None, providers=None, enable_fallback=1):
        assert enable_fallback == 0
        self.calls.append([_provider_name(p) for p in providers])
        error = self.fails(self.calls[-1])
        if error is not None:
            raise error
        return Made(self.calls[-1])


def _maker(monkeypatch, fails):
    recorder = Recorder(fails)
    monkeypatch.setattr(onnxruntime, "InferenceSession", recorder)
    return _SessionMaker("m.onnx", None, [TRT, *REST]), recorder


def test_the_tensorrt_provider_failing_falls_back_once_in_one_line_for_every_later_session(monkeypatch):
    missing = ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : TensorRT EP could not be loaded: libnvinfer.so.10\nmore")
    make, recorder = _maker(monkeypatch, lambda names: missing if names[0] == "TensorrtExecutionProvider" else None)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert make("vocabulary").providers == REST and make("image").providers == REST
    assert [str(w.message) for w in said if w.category is FisaWarning] == [
        "m.onnx: ONNX Runtime's TensorrtExecutionProvider failed ([ONNXRuntimeError] : 1 : FAIL : TensorRT EP could "
        "not be loaded: libnvinfer.so.10); running on CUDAExecutionProvider, CPUExecutionProvider"]
    assert recorder.calls == [["TensorrtExecutionProvider", *REST], REST, REST]


class EngineFailsAtRun:
    """A session whose runs fail as the TensorRT EP's engine build at a first run does (EPFail)."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, outputs, feed, run_options=None):
        self.runs += 1
        raise ort_errors.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : TensorRT EP failed to create engine from network")


def _inputs(backend):
    images = torch.randint(0, 256, (1, 3, backend.image_size, backend.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return images, random_text(3, backend.embed_dim).numpy()


def test_a_gpu_provider_failing_at_a_run_remakes_the_sessions_on_the_providers_after_it(artefacts):
    backend = OnnxRuntimeBackend(artefacts["ort"], providers=["CPUExecutionProvider"])
    images, text = _inputs(backend)
    want = backend.run(images, text)
    # as on a GPU: the TensorRT EP first, failing at the first run; then the image graph is remade from the model's
    # file (ONNX Runtime's set_providers would load it again from the split's temporary file, gone by then)
    backend.sessions.providers = [TRT, "CPUExecutionProvider"]
    backend.session = failing = EngineFailsAtRun(backend.session)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = backend.run(images, text)
    assert [str(w.message) for w in said if w.category is FisaWarning] == [
        f"{artefacts['ort']}: ONNX Runtime's TensorrtExecutionProvider failed ([ONNXRuntimeError] : 11 : EP_FAIL : "
        "TensorRT EP failed to create engine from network); running on CPUExecutionProvider"]
    assert failing.runs == 1 and backend.session is not failing and backend.vocabulary is not None
    assert backend.sessions.providers == ["CPUExecutionProvider"] and backend.device == torch.device("cpu")
    torch.testing.assert_close(got.class_scores, want.class_scores)


def test_a_run_s_error_is_the_exception_alone_not_a_log_line_first(artefacts, capfd):
    """ONNX Runtime's logger printed a run's error on its own line ("[E:onnxruntime ... ExecuteKernel] ..."), before
    fisa-rt's one line for it: the backend's runs log fatal errors only."""
    x, shape = (helper.make_tensor_value_info(n, t, [None]) for n, t in (("x", TensorProto.FLOAT),
                                                                        ("s", TensorProto.INT64)))
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g", [x, shape],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    make = _SessionMaker("m.onnx", None, ["CPUExecutionProvider"])
    session = make(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(Exception, match="cannot be reshaped"):  # 4 values into 3
        session.run(None, {"x": np.ones(4, np.float32), "s": np.array([3])}, make.run_options)
    assert "ExecuteKernel" not in capfd.readouterr().err
    backend = OnnxRuntimeBackend(artefacts["ort"], providers=["CPUExecutionProvider"])
    passed = []
    backend.session = RunRecorder(backend.session, passed)
    backend.vocabulary.session = RunRecorder(backend.vocabulary.session, passed)
    backend.run(*_inputs(backend))
    assert [options.log_severity_level for options in passed] == [4, 4]  # the vocabulary graph's run, the image's


class RunRecorder:
    def __init__(self, session, passed):
        self.session, self.passed = session, passed

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, outputs, feed, run_options=None):
        self.passed.append(run_options)
        return self.session.run(outputs, feed, run_options)


def test_a_remake_that_fails_too_raises_the_first_error_and_keeps_the_backend_as_it_was(artefacts, monkeypatch):
    backend = OnnxRuntimeBackend(artefacts["ort"], providers=["CPUExecutionProvider"], split_graph=False)
    images, text = _inputs(backend)
    backend.sessions.providers = [TRT, "CPUExecutionProvider"]
    backend.session = failing = EngineFailsAtRun(backend.session)

    def refuse(source, options=None, providers=None, enable_fallback=1):
        raise ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : the CPU provider refuses too")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "running on" line for a fallback that did not happen
        with pytest.raises(ort_errors.EPFail, match="failed to create engine"):
            backend.run(images, text)
    assert backend.session is failing and backend.sessions.providers == [TRT, "CPUExecutionProvider"]
    short = ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of size 8")

    def short_of_memory(source, options=None, providers=None, enable_fallback=1):
        raise short

    monkeypatch.setattr(onnxruntime, "InferenceSession", short_of_memory)
    with pytest.raises(ort_errors.Fail, match="Failed to allocate"):  # short of memory: the remake's own error
        backend.run(images, text)


def test_a_run_with_nothing_to_fall_back_to_is_raised_as_it_is(artefacts):
    backend = OnnxRuntimeBackend(artefacts["ort"], providers=["CPUExecutionProvider"], split_graph=False)
    images, text = _inputs(backend)
    for providers, required in ((["CPUExecutionProvider"], False), (REST, True)):  # CPU alone; --device cuda
        backend.sessions.providers, backend.sessions.gpu_required = providers, required
        backend.session = failing = EngineFailsAtRun(backend.session)
        with pytest.raises(ort_errors.EPFail):
            backend.run(images, text)
        assert failing.runs == 1 and backend.session is failing
        backend.session = failing.session


def test_other_failures_are_raised_as_they_are(monkeypatch):
    bad = ort_errors.InvalidGraph("[ONNXRuntimeError] : 10 : INVALID_GRAPH : bad graph")
    make, recorder = _maker(monkeypatch, lambda names: bad)  # fails on every provider: the first error is the one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ort_errors.InvalidGraph) as raised:
            make("image")
    assert raised.value is bad and len(recorder.calls) == 2
    short = ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of size 8")
    make, recorder = _maker(monkeypatch, lambda names: short)  # short of memory: another provider needs it too
    with pytest.raises(ort_errors.Fail):
        make("image")
    assert len(recorder.calls) == 1
    make, recorder = _maker(monkeypatch, lambda names: bad)
    make.providers = ["CPUExecutionProvider"]  # nothing to fall back to
    with pytest.raises(ort_errors.InvalidGraph):
        make("image")
    assert recorder.calls == [["CPUExecutionProvider"]]


def test_cuda_failing_falls_back_to_the_cpu_unless_a_gpu_was_asked_for(monkeypatch):
    cuda = RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
    make, recorder = _maker(monkeypatch, lambda names: cuda if names[0] != "CPUExecutionProvider" else None)
    make.providers = REST  # onnx_providers without a --device: CUDA first where there is no TensorRT EP
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert make("image").providers == ["CPUExecutionProvider"]
    assert [str(w.message) for w in said] == ["m.onnx: ONNX Runtime's CUDAExecutionProvider failed (CUDA failure 100: "
                                              "no CUDA-capable device is detected); running on CPUExecutionProvider"]
    make, recorder = _maker(monkeypatch, lambda names: cuda if names[0] != "CPUExecutionProvider" else None)
    make.providers, make.gpu_required = REST, True  # --device cuda: never the CPU alone
    with pytest.raises(RuntimeError, match="CUDA failure 100"):
        make("image")
    assert recorder.calls == [REST]


def test_short_of_memory_for_the_split_graph_is_not_answered_by_the_whole_graph(artefacts, monkeypatch):
    arena = ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of size 8")
    made = []

    def image_session_fails(source, options=None, providers=None, enable_fallback=1):
        made.append(source)
        if len(made) == 2:  # the vocabulary graph's session made, the image graph's has no memory
            raise arena
        return Made(providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", image_session_fails)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not "every node runs once per image", then a third try
        with pytest.raises(ort_errors.Fail):
            OnnxRuntimeBackend(artefacts["portable"], providers=["CPUExecutionProvider"])
    assert len(made) == 2


@NO_FALLBACK
def test_an_image_model_onnx_runtime_cannot_load_is_one_error_line(artefacts, retried, capfd):
    with pytest.raises(CheckpointError, match="ONNX Runtime cannot load .*pthread_create failed"):
        OnnxRuntimeBackend(artefacts["portable"], providers=["CPUExecutionProvider"], split_graph=False)
    assert retried == [["CPUExecutionProvider"]] and capfd.readouterr().out == ""
