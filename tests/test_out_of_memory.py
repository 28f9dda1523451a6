"""An allocation that fails (a batch too big for the GPU or the host) ends a command with one line saying what
could not be allocated and what to ask for instead, exit code 1; any other error still shows its traceback."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from fisa_rt.errors import out_of_memory, run_reporting_errors

# the texts each library gives, copied from real failures (the CUDA one from torch 2.x's caching allocator)
CUDA = ("CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 14.57 GiB of which 1.58 GiB "
        "is free. Process 2493055 has 12.02 GiB memory in use. Including non-PyTorch memory, this process has 966.00 "
        "MiB memory in use. Of the allocated memory 734.07 MiB is allocated by PyTorch, and 33.93 MiB is reserved by "
        "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management")
ARENA = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul node. Name:'/model/"
         "backbone/resblocks.0/attn/MatMul_1' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:"
         "360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate "
         "memory for requested buffer of size 67634176")
EXPECTED = {
    "numpy": (MemoryError("Unable to allocate 72.8 TiB for an array with shape (10000000000000,) and data type "
                          "float64"), "Unable to allocate 72.8 TiB for an array with shape (10000000000000,) and data "
                                      "type float64"),
    "torch cpu": (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 67634176 bytes. Error code 12 (Cannot allocate memory)"),
                  "PyTorch could not allocate 64.5 MiB of host memory"),
    "torch cuda": (torch.OutOfMemoryError(CUDA), "CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total "
                   "capacity of 14.57 GiB of which 1.58 GiB is free. Process 2493055 has 12.02 GiB memory in use."),
    "onnxruntime arena": (ort_errors.Fail(ARENA), "ONNX Runtime could not allocate 64.5 MiB"),
    "onnxruntime bad_alloc": (ort_errors.RuntimeException(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running MatMul node. "
        "Name:'/model/backbone/resblocks.0/attn/MatMul_1' Status Message: std::bad_alloc"),
        "ONNX Runtime could not allocate memory"),
    "onnxruntime cuda": (ort_errors.Fail(
        "[ONNXRuntimeError] : 1 : FAIL : onnxruntime::CudaCall CUDA failure 2: out of memory ; GPU=0 ; "
        "expr=cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);"), "ONNX Runtime could not allocate memory"),
    # under a limit on the address space (RLIMIT_AS), before any array: a thread's stack, a library's mapping
    "python thread": (RuntimeError("can't start new thread"),
                      "could not start a thread: no memory for its stack, or the limit on threads reached"),
    "onnxruntime thread": (RuntimeError(
        "/onnxruntime_src/onnxruntime/core/platform/posix/env.cc:327 onnxruntime::{anonymous}::PosixThread::PosixThread"
        "(const char*, int, unsigned int (*)(int, Eigen::ThreadPoolInterface*), Eigen::ThreadPoolInterface*, const "
        "onnxruntime::ThreadOptions&) pthread_create failed, error code: 12 error msg: Cannot allocate memory"),
        "ONNX Runtime could not start a thread"),
    "shared library": (ImportError(
        "/venv/lib/python3.11/site-packages/onnx/onnx_cpp2py_export.cpython-311-x86_64-linux-gnu.so: failed to map "
        "segment from shared object", name="onnx_cpp2py_export",
        path="/venv/lib/python3.11/site-packages/onnx/onnx_cpp2py_export.cpython-311-x86_64-linux-gnu.so"),
        "could not map onnx_cpp2py_export.cpython-311-x86_64-linux-gnu.so into memory"),
}


@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_each_library_s_allocation_failure_is_recognised(source):
    error, said = EXPECTED[source]
    assert out_of_memory(error) == said


def test_a_library_on_a_noexec_mount_is_not_taken_for_memory(monkeypatch, tmp_path):
    """glibc 2.36 words a noexec mount's refusal as an address-space limit's: "failed to map segment"."""
    library = tmp_path / "ext.so"
    library.write_bytes(b"")
    error = ImportError(f"{library}: failed to map segment from shared object", name="ext", path=str(library))
    flags = {"noexec": os.ST_NOEXEC, "exec": 0}
    for mount, flag in flags.items():
        monkeypatch.setattr(os, "statvfs", lambda path, flag=flag: SimpleNamespace(f_flag=flag))
        assert (out_of_memory(error) is None) == (mount == "noexec")


def test_other_errors_are_not_taken_for_allocation_failures():
    assert out_of_memory(RuntimeError("shape mismatch: out of memory-mapped range")) is None
    assert out_of_memory(ort_errors.Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed")) is None
    assert out_of_memory(ValueError("Failed to allocate memory for requested buffer of size 8")) is None  # not ORT's
    assert out_of_memory(ImportError("lib.so: failed to map segment from shared object: Operation not permitted")) \
        is None  # a library on a noexec mount
    assert out_of_memory(ImportError("No module named 'tensorrt'")) is None


def test_one_line_and_exit_code_1_and_other_errors_keep_their_traceback(capsys):
    def job():
        raise torch.OutOfMemoryError(CUDA)

    assert run_reporting_errors(job, False, "fisa-rt") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"fisa-rt: error: out of memory ({EXPECTED['torch cuda'][1]}): use a smaller batch, fewer classes or smaller "
        "images, or free memory"
    ]
    with pytest.raises(RuntimeError, match="boom"):
        run_reporting_errors(lambda: (_ for _ in ()).throw(RuntimeError("boom")), False, "fisa-rt")


def test_build_engine_gives_a_build_s_advice(monkeypatch, capsys):
    from fisa_rt.export import build_engine

    def build(args):
        raise EXPECTED["numpy"][0]

    monkeypatch.setattr(build_engine, "build", build)
    assert build_engine.main(["--out", "unused"]) == 1
    error = capsys.readouterr().err.splitlines()
    assert error == [f"build_engine.py: error: out of memory ({EXPECTED['numpy'][1]}): {build_engine.BUILD_MEMORY}"]


def test_onnx_runtime_short_of_memory_at_load_is_not_called_a_bad_file(artefacts, monkeypatch):
    import onnxruntime

    from fisa_rt.runtime.backends import OnnxRuntimeBackend

    def refuse(*args, **kwargs):
        raise ort_errors.Fail(ARENA)

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(ort_errors.Fail) as raised:  # left for the CLI's out-of-memory line, not a CheckpointError
        OnnxRuntimeBackend(artefacts["portable"], split_graph=False)
    assert out_of_memory(raised.value) == "ONNX Runtime could not allocate 64.5 MiB"


def test_tensorrt_without_memory_for_a_context_says_what_it_needs_and_what_to_rebuild(capsys):
    from fisa_rt.errors import OutOfMemory
    from fisa_rt.runtime.backends import execution_context

    # TensorRT's Python API gives None where createExecutionContext cannot allocate the engine's scratch memory
    engine = SimpleNamespace(create_execution_context=lambda: None, device_memory_size_v2=3 * 2**30)
    manifest = {"tensorrt": {"profiles": {"batch": {"min": 1, "opt": 1, "max": 8}}}}
    with pytest.raises(OutOfMemory, match=r"needs 3.0 GiB of GPU memory for the largest shapes of its profiles "
                                          r"\(\{'batch': \{'min': 1, 'opt': 1, 'max': 8\}\}\).*smaller --batch"):
        execution_context(engine, "m.engine", manifest)
    assert run_reporting_errors(lambda: execution_context(engine, "m.engine", manifest), False, "fisa-rt") == 1
    assert capsys.readouterr().err.startswith("fisa-rt: error: TensorRT could not create an execution context")
    context = object()
    assert execution_context(SimpleNamespace(create_execution_context=lambda: context), "m.engine", {}) is context


def test_tensorrt_tells_a_plan_the_gpu_cannot_hold_from_a_corrupt_one(tmp_path, monkeypatch):
    from fisa_rt import CheckpointError
    from fisa_rt.errors import OutOfMemory
    from fisa_rt.runtime.backends import deserialized_engine

    plan = tmp_path / "m.engine"
    plan.write_bytes(b"x" * 4096)
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda data: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (1024, 8 * 2**30))
    with pytest.raises(OutOfMemory, match=r"cannot load .*m.engine \(4.0 KiB\) into the 1.0 KiB of GPU memory"):
        deserialized_engine(runtime, str(plan))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (2**30, 8 * 2**30))
    with pytest.raises(CheckpointError, match="cannot deserialize"):
        deserialized_engine(runtime, str(plan))
    engine = object()
    assert deserialized_engine(SimpleNamespace(deserialize_cuda_engine=lambda data: engine), str(plan)) is engine


# fisa-rt infer in a process whose address space may grow only ``margin`` bytes past what its imports took (none:
# no limit); it reports that size, its peak and the exit code
PROBE = """
import json, resource, sys
import onnxruntime, torch  # noqa: F401 -- mapped before the limit is set
import fisa_rt.runtime.folder_run, fisa_rt.runtime.segmenter  # noqa: F401
from fisa_rt.cli import main
report, margin = sys.argv[1], int(sys.argv[2])
def size(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))
used = size("VmSize")
if margin:
    resource.setrlimit(resource.RLIMIT_AS, (used + margin, resource.RLIM_INFINITY))
code = main(sys.argv[3:])
with open(report, "w") as f:
    json.dump({"code": code, "used": used, "peak": size("VmPeak")}, f)
sys.exit(code)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="limits the address space through /proc and rlimit")
def test_infer_with_a_batch_the_memory_cannot_hold_says_so_in_one_line(artefacts, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(one / "a.png")
    for i in range(128):
        os.symlink(one / "a.png", many / f"{i:03d}.png")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def infer(images, batch: int, margin: int):
        report = tmp_path / "report.json"
        report.unlink(missing_ok=True)
        args = ["infer", "--engine", artefacts["ort"], "--vocab", "synthetic", "--input", str(images), "--out",
                str(tmp_path / f"out-{batch}-{margin}"), "--batch", str(batch), "--threads", "2", "--no-progress"]
        done = subprocess.run([sys.executable, "-c", PROBE, str(report), str(margin), *args], capture_output=True,
                              text=True, timeout=600, env=env)
        return done, (json.loads(report.read_text()) if report.is_file() else None)

    # the limit: what one image at a time took past the imports, measured here (glibc's and ONNX Runtime's layouts
    # differ between versions and machines), and 256 MiB more; 128 images at once need gigabytes
    done, free = infer(one, 1, 0)
    assert done.returncode == 0, done.stderr
    margin = free["peak"] - free["used"] + 256 * 2**20
    failed, _ = infer(many, 128, margin)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("fisa-rt:")]
    assert len(errors) == 1 and errors[0].startswith("fisa-rt: error: out of memory ("), failed.stderr
    assert "Traceback" not in failed.stderr and "ExecuteKernel" not in failed.stderr  # nor ONNX Runtime's log line
    done, limited = infer(one, 1, margin)  # the limit alone is not what failed
    assert done.returncode == 0 and limited["code"] == 0, done.stderr
