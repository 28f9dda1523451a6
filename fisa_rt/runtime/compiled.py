"""``--compile``: the PyTorch backend's forward through ``torch.compile``; and under autocast.

Mode ``max-autotune-no-cudagraphs``: Inductor's autotuned kernels without its own CUDA graphs, since the
runner (fisa_rt.runtime.cuda_graphs) captures the compiled forward itself, per (batch, canvas, vocabulary
bucket), and a graph inside a graph is refused. ``dynamic=False``: each shape the runner meets is a shape
it replays, so specialised kernels cost nothing. Inductor's caches (FX graphs, autotuning results) are on by
default; they go to ``$XDG_CACHE_HOME/fisa-rt/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise,
so a second process with the same model, shapes and versions skips the compile's longest parts.
"""

from __future__ import annotations

import os

import torch

from .cache_dirs import cache_dir

MODE = "max-autotune-no-cudagraphs"


def inductor_cache_dir() -> str:
    return cache_dir("inductor")


def _torch_default_cache_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # torch before 2.5 keeps it elsewhere; there, an unset variable is the only default
        return ""
    return os.path.abspath(default_cache_dir())


def use_inductor_cache() -> str:
    """Point Inductor at fisa-rt's cache unless the user chose one. Importing torch._dynamo (the kernels do)
    writes torch's own default, a folder in /tmp, into TORCHINDUCTOR_CACHE_DIR: that value is not a choice,
    and left there it sent --compile's cache to /tmp, which a reboot empties."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == _torch_default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache_dir()
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def compile_forward(module: torch.nn.Module):
    """``module`` compiled (lazily: the first call of each shape compiles)."""
    use_inductor_cache()
    return torch.compile(module, mode=MODE, dynamic=False)


def autocast_forward(forward, device: torch.device, dtype: torch.dtype):
    """``forward`` run under ``torch.autocast(device.type, dtype)``; the outputs as it returns them."""

    def run(*args):
        with torch.autocast(device.type, dtype=dtype):
            return forward(*args)

    return run
