"""The NVIDIA driver, as far as the fused engines care: which CUDA release it supports, and whether it can
JIT-compile the PTX ISA their plugin kernels declare. Needs neither Triton nor TensorRT, because an engine's
load checks it before either is touched (``runtime.backends.check_engine_compatibility``)."""

import ctypes
from typing import Optional

from fisa_rt.errors import MissingDependencyError
from fisa_rt.kernels import targets


def driver_cuda() -> Optional[str]:
    """The newest CUDA release the NVIDIA driver supports ("12.9"), or None where no driver loads."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"  # 12090 -> 12.9


def check_driver_reads(isa: int, what: str, driver: Optional[str]) -> None:
    """Refuse PTX of an ISA (x10) that ``driver`` (a CUDA release; None: not known, nothing refused) cannot JIT:
    TensorRT would fail on it inside the build or the engine's load, without naming the driver."""
    if driver is None or targets.isa_of_cuda(driver) >= isa:
        return
    raise MissingDependencyError(
        f"{what} embeds PTX ISA {isa // 10}.{isa % 10}, which this NVIDIA driver (CUDA {driver}) cannot compile: "
        f"install a driver for CUDA {targets.cuda_of_isa(isa)} or newer, or build the portable flavour "
        "(--flavour portable)"
    )


__all__ = ["check_driver_reads", "driver_cuda"]
