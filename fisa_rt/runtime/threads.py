"""CPU threads of both runtimes a ``Segmenter`` drives: torch (pre- and post-processing, the PyTorch backend) and
ONNX Runtime (the model). They run one after the other, so each may use every core, but no more: the default
is torch's own count (OMP_NUM_THREADS, ``torch.set_num_threads``) capped at the cores this process may run on
(its affinity mask, which containers and ``taskset`` narrow), and a Triton instance gets cores / instances
(fisa_rt.serving.repository).

ONNX Runtime's workers spin after each run by default, waiting for the next one, and compete with torch's
pre- and post-processing for the same cores; fisa-rt turns spinning off (measured: docs/design.md,
"Threads")."""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..config import MAX_THREADS
from ..errors import InputError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(threads: Optional[int]) -> int:
    """``threads`` checked, or the default: torch's thread count (which OMP_NUM_THREADS and
    ``torch.set_num_threads`` set), at most the available cores."""
    if threads is None:
        return max(1, min(torch.get_num_threads(), available_cores()))
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise InputError(f"threads must be an integer from 1 to {MAX_THREADS}; got {threads!r}")
    return threads


def apply_torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process (torch has one pool per process)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def onnxruntime_options(ort, threads: int, spinning: bool = False):
    """SessionOptions with ``threads`` intra-op threads, one inter-op thread, spinning as given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options
