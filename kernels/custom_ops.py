"""The Triton host functions as PyTorch custom ops (namespace ``fisa_rt``).

Registered as operators, each fused forward and backward is one node to ``torch.compile(fullgraph=True)``,
``torch.export`` and CUDA-graph capture: no graph break, and no Python launcher left between the kernels of
a compiled graph. On a GPU each is a ``torch.library.triton_op``: compile and non-strict export trace into
its body, where ``tuning.launch`` calls every kernel through ``wrap_triton``, so Inductor launches the
kernels itself; its fake implementation is the body run on FakeTensors. Under Triton's interpreter
(``TRITON_INTERPRET=1``, the CPU tests) ``wrap_triton`` cannot trace an interpreted kernel, so the op is an
opaque ``torch.library.custom_op`` with the same body as its fake implementation (``launch`` skips the
kernels of FakeTensors). Autograd is registered on each forward op with its backward op.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.library import triton_op

from .dispatch import interpreting

NAMESPACE = "fisa_rt"


def fused_op(name: str) -> Callable[[Callable], Callable]:
    """Decorator: the host function as the operator ``fisa_rt::<name>`` (it allocates its outputs and
    launches kernels; no argument is mutated)."""

    def register(fn: Callable):
        qualified = f"{NAMESPACE}::{name}"
        if not interpreting():
            return triton_op(qualified, fn, mutates_args=())
        op = torch.library.custom_op(qualified, fn, mutates_args=())
        op.register_fake(fn)
        return op

    return register
