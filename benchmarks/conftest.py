"""Shared pieces of the benchmark suite (``pytest benchmarks/ --benchmark-only``).

Timing: pytest-benchmark's pedantic mode with explicit warm-up rounds; on CUDA every timed call ends
with ``torch.cuda.synchronize()`` so the clock stops when the GPU is done, not when the launch returns.
Everything a backend needs that this machine lacks is a skip with the reason, and the report script
(``benchmarks/report.py``) lists those reasons.
"""

from __future__ import annotations

import datetime
import os
import platform

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    # the fused ONNX's plugin kernels run in Triton's interpreter here (as in tests/conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(benchmark, fn, rounds: int = 20, warmup: int = 3, iterations: int = 1):
    """Time ``fn`` (which must leave no work queued behind: it is followed by a synchronize)."""

    def call():
        result = fn()
        synchronize()
        return result

    return benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup, iterations=iterations)


def _versions() -> dict:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "onnxruntime", "onnx", "open_clip", "tensorrt"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    return versions


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fisa_rt"] = {
        "date": datetime.date.today().isoformat(),
        "device": (
            torch.cuda.get_device_name()
            if DEVICE == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        ),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if DEVICE == "cuda" else None,
        "versions": _versions(),
    }


_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append({"test": report.nodeid, "reason": reason.removeprefix("Skipped: ")})


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Skipped backends go into the JSON too, so the report says what was not measured and why."""
    output_json["skipped"] = list(_SKIPPED)


def _build(argv: list[str]) -> None:
    """``build_engine.py`` as a fixture's set-up: its progress and its warnings (ModelOpt's, which the
    manifest's ``modelopt_log`` keeps) are not the benchmarks' findings, so they stay out of the summary."""
    import contextlib
    import io
    import warnings

    from fisa_rt.export.build_engine import build, parse_args

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build(parse_args(argv))


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    """The embedded default model built as README says (ONNX, ORT fallback, engine where TensorRT
    exists); FISA_BENCH_BUILD=<folder> reuses a folder built elsewhere (e.g. engines built on a Jetson)."""
    folder = os.environ.get("FISA_BENCH_BUILD")
    if folder:
        return folder
    folder = str(tmp_path_factory.mktemp("build"))
    _build(["--out", folder])
    return folder


@pytest.fixture(scope="session")
def int8_artefacts(artefacts, tmp_path_factory):
    """The embedded model's int8 Q/DQ ONNX (``build_engine.py --precision int8``), calibrated on 128 synthetic
    *train* scenes: never the validation slice or the images the suite compares on. With FISA_BENCH_BUILD,
    that folder (an int8 engine built elsewhere is found there too)."""
    from fisa_rt.data.synthetic import generate

    if os.environ.get("FISA_BENCH_BUILD"):
        return artefacts
    data = str(tmp_path_factory.mktemp("calibration"))
    generate(data, "train", 128, seed=2)
    folder = str(tmp_path_factory.mktemp("build-int8"))
    _build(["--out", folder, "--precision", "int8", "--calibration", os.path.join(data, "images", "train")])
    return folder


@pytest.fixture(scope="session")
def validation_slice(tmp_path_factory):
    """A fixed slice of the synthetic validation set (seed 0, as docs/training.md uses)."""
    from fisa_rt.data.synthetic import generate

    root = str(tmp_path_factory.mktemp("synthetic"))
    generate(root, "val", 24, seed=0)
    return root


@pytest.fixture
def cuda_only():
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU (Triton kernels); this machine has none")
