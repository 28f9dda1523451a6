"""Which implementation of an op runs: the fused Triton kernel or the PyTorch reference.

``backend`` is one of BACKENDS and comes from the model config (``FisaConfig.kernels``), never from a
global: "auto" takes the Triton kernel for CUDA tensors when Triton is importable and the reference
everywhere else; "triton" and "reference" force one path; "onnx" runs the reference but exports each op as
one custom node for TensorRT plugins (``onnx_ops.py``). Forcing "triton" on CPU tensors works only
under Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported), which is how CI runs
the kernels on a machine without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "reference", "onnx")


class KernelUnavailableError(RuntimeError):
    """The Triton path was forced where it cannot run."""


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}; got {backend!r}")
    if backend in ("reference", "onnx"):
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise KernelUnavailableError("kernel backend 'triton' needs the triton package: pip install triton")
    if not on_cuda and not interpreting():
        raise KernelUnavailableError(
            "kernel backend 'triton' got CPU tensors; run on CUDA, or set TRITON_INTERPRET=1 before importing "
            "triton to run the kernels in Triton's CPU interpreter"
        )
    return True
