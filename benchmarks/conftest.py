"""Shared pieces of the benchmark suite (``pytest benchmarks/ --benchmark-only``).

Timing: pytest-benchmark's pedantic mode with explicit warm-up rounds; on CUDA every timed call ends
with ``torch.cuda.synchronize()`` so the clock stops when the GPU is done, not when the launch returns.
Everything a backend needs that this machine lacks is a skip with the reason, and the report script
(``benchmarks/report.py``) lists those reasons.
"""

from __future__ import annotations

import datetime
import platform

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if DEVICE == "cuda" else None,
        "versions": _versions(),
    }


@pytest.fixture
def cuda_only():
    if DEVICE != "cuda":
        pytest.skip("needs a CUDA GPU (Triton kernels); this machine has none")
