"""Kernel dispatch: which implementation of a fused op runs, in one place for the three ops.

``mode`` is one of ``fisa_rt.config.KERNEL_MODES`` and comes from the model config (``FisaConfig.kernels``):

* ``"reference"``: the PyTorch reference ("eager").
* ``"triton"``: the fused Triton kernel, forced. On CPU tensors it works only under Triton's interpreter
  (``TRITON_INTERPRET=1``, set before Triton is imported), which is how CI runs the kernels without a GPU.
* ``"auto"``: per op and shape bucket, the fastest of the op's candidates (the Triton kernel, SDPA's flash /
  cuDNN / efficient backends, eager) as measured on this card under CUDA graphs (``choice.py``); on CPU, for
  inference, the fastest of SDPA and eager on the wall clock (CPU training runs eager). A bucket is measured at
  its first use, or ahead of time by ``fisa-rt tune``; the lookup is a constant to ``torch.compile``
  (``assume_constant_result``), so choosing costs no graph break, and a graph being captured never measures:
  an unmeasured bucket runs eager there, with a warning.

The fused ONNX nodes are not a mode: ``onnx_ops.fused_nodes()`` switches them on while exporting.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import warnings
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch


from .choice import ChoiceTable, NoCandidateRanError, Timer, bucket_key, cuda_graph_timer, table_path, wall_clock_timer

# The values of FisaConfig.kernels. fisa_rt.config keeps its own copy (tests/kernels/test_dispatch.py keeps the
# two equal): kernels/ imports nothing of the model, and the config imports no kernels module (and so no torch,
# which `fisa-rt --help` must not wait for).
KERNEL_MODES = ("auto", "triton", "reference")

# op name -> (shape bucket, dtype, device, grad, names) -> {implementation: no-argument call}, one per name
CandidateBuilder = Callable[[Tuple[int, ...], torch.dtype, torch.device, bool, Sequence[str]], Mapping[str, Callable]]
_BUILDERS: Dict[str, CandidateBuilder] = {}
# op name -> the names of its implementations (its module's CANDIDATES)
_NAMES: Dict[str, Tuple[str, ...]] = {}
# device name -> this process's view of that device's cached choices
_TABLES: Dict[str, ChoiceTable] = {}


class _Export:
    """Set only inside ``onnx_ops.fused_nodes()``: the ops then emit their custom ONNX node (timm's
    ``set_exportable`` switch; one flag for a process-wide, export-time state, never a model setting)."""

    fused_nodes = False


def exporting_fused_nodes() -> bool:
    return _Export.fused_nodes


class KernelUnavailableError(RuntimeError):
    """The Triton path was forced where it cannot run."""


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def size_bucket(n: int) -> int:
    """The power of two at or above ``n``: shapes in one bucket share one measurement (and one autotuning
    result, ``tuning.launch``), so a new vocabulary size (K = 133, 150, 171) does not re-time anything."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def random_inputs(device: torch.device) -> Callable[..., torch.Tensor]:
    """``randn(*shape, dtype=, grad=)`` for a candidate's timing inputs, from a generator of its own: a shape
    bucket's first use leaves torch's global random state where it was (a seeded run drew other numbers after it
    depending on whether the choice was already in the table)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype, requires_grad=grad)

    return randn


def check_mode(mode: str) -> None:
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {KERNEL_MODES}; got {mode!r}")


def use_triton(mode: str, *tensors: torch.Tensor) -> bool:
    """Whether ``mode`` forces the Triton kernel (``"triton"``, checked runnable here); ``auto`` never does
    by itself, it measures (``select``)."""
    check_mode(mode)
    if mode != "triton":
        return False
    if not triton_available():
        raise KernelUnavailableError("kernels 'triton' needs the triton package: pip install triton")
    if not all(t.is_cuda for t in tensors) and not interpreting():
        raise KernelUnavailableError(
            "kernels 'triton' got CPU tensors; run on CUDA, or set TRITON_INTERPRET=1 before importing "
            "triton to run the kernels in Triton's CPU interpreter"
        )
    return True


def require_tensors(**tensors) -> None:
    """Each argument a floating-point torch.Tensor, or one TypeError naming it (a NumPy array failed on a missing
    attribute; an integer tensor inside the shape bucket's timing, which builds random inputs of its dtype)."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            what = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"{name} must be a floating-point torch.Tensor; got {what}")


def register_op(op: str, names: Iterable[str], build: CandidateBuilder) -> None:
    """``names``: the op's implementations; ``build(bucket, dtype, device, grad, names)`` returns the
    candidates among them, each a no-argument call on inputs of the bucket's shape (each op module registers
    its own)."""
    _NAMES[op] = tuple(names)
    _BUILDERS[op] = build


def runnable(op: str, device_type: str) -> Tuple[str, ...]:
    """The implementations of ``op`` that ``auto`` may time and run on this device type."""
    return tuple(n for n in _NAMES[op] if n != "triton" or triton_runs_on(device_type))


def measurable(tensors: Sequence[torch.Tensor], grad: bool) -> bool:
    """``auto`` measures CUDA tensors, and CPU tensors outside grad mode (``grad``: torch.is_grad_enabled()): a
    CPU training step runs the references, so a CPU training run's weights (the study's, docs/training.md) repeat
    bit for bit whatever a timing decided; its evaluations, without grad, run the measured choice (~1e-7 from
    eager). Grad mode, not the inputs' requires_grad: behind a frozen CLIP (the generator stage, `adapt
    --trainable frozen`) an op's inputs need no gradient inside a training step."""
    if all(t.is_cuda for t in tensors):
        return True
    return not grad and all(t.device.type == "cpu" for t in tensors)


def triton_runs_on(device_type: str) -> bool:
    """Whether the Triton kernel is a candidate: on CUDA; on CPU Triton only interprets (a test tool)."""
    return device_type == "cuda" and triton_available()


def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_name() -> str:
    """The host's CPU model and torch's thread count, both of which decide CPU timings (read at every op call:
    the thread count may change between calls)."""
    return f"cpu {_cpu_model()} {torch.get_num_threads()} threads"


def choice_table(name: str, timer: Timer = cuda_graph_timer) -> ChoiceTable:
    """The cached choices of the device called ``name`` (loaded once per process)."""
    if name not in _TABLES:
        _TABLES[name] = ChoiceTable(name, table_path(name), timer)
    return _TABLES[name]


def table_for(device_type: str, index: int = 0) -> ChoiceTable:
    """The choices of CUDA device ``index`` (timed under CUDA graphs) or of this CPU (on the wall clock)."""
    if device_type == "cuda":
        return choice_table(device_name(index))
    return choice_table(cpu_name(), wall_clock_timer)


def local_table() -> ChoiceTable:
    """The table ``auto`` uses here: the current GPU's, or the CPU's on a machine without one."""
    if torch.cuda.is_available():
        return table_for("cuda", torch.cuda.current_device())
    return table_for("cpu")


def install_table(table: ChoiceTable) -> None:
    """Use ``table`` for its device from now on (``fisa-rt tune --force`` starts an empty one; tests inject
    timers)."""
    _TABLES[table.device_name] = table


def select(op: str, mode: str, tensors: Sequence[torch.Tensor], bucket: Tuple[int, ...]) -> str:
    """The implementation of ``op`` to run on ``tensors`` under ``mode``: "eager", "triton" or a name from
    the op's candidates."""
    if use_triton(mode, *tensors):
        return "triton"
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # deterministic training runs the references, which honour torch.use_deterministic_algorithms (the Triton
    # mask-attention backward adds with fp32 atomics, and SDPA's flash backward is not deterministic either)
    deterministic = grad and torch.are_deterministic_algorithms_enabled()
    if mode == "reference" or deterministic or not measurable(tensors, torch.is_grad_enabled()):
        return "eager"
    dtype = str(tensors[0].dtype).replace("torch.", "")
    index = tensors[0].device.index if tensors[0].device.index is not None else 0
    return measured_choice(op, dtype, grad, tuple(int(n) for n in bucket), tensors[0].device.type, index)


@torch.compiler.assume_constant_result
def measured_choice(op: str, dtype: str, grad: bool, bucket: Tuple[int, ...], device_type: str, index: int) -> str:
    cuda = device_type == "cuda"
    table = table_for(device_type, index)
    key = bucket_key(op, dtype, grad, bucket)
    known = table.get(key)
    names = runnable(op, device_type)
    # a choice this process cannot run (a renamed candidate in a file an older fisa-rt wrote, an edited file) is
    # measured again and replaced
    if known is not None and known.implementation in names:
        return known.implementation
    if cuda and torch.cuda.is_current_stream_capturing():
        warnings.warn(f"{key}: not measured before this CUDA-graph capture (run the model once first, or "
                      "`fisa-rt tune`); running the PyTorch reference", stacklevel=2)
        return "eager"
    device = torch.device(device_type, index) if cuda else torch.device(device_type)
    candidates = _BUILDERS[op](bucket, getattr(torch, dtype), device, grad, names)
    try:
        # timed on the tensors' GPU: the timer's stream and graph, and Triton's launches, use the current device
        with torch.cuda.device(device) if cuda else contextlib.nullcontext():
            return table.decide(key, candidates).implementation
    except NoCandidateRanError as exc:
        # nothing could be timed (a capture refused even eager): run the reference, measure again next process
        warnings.warn(f"{exc}; running the PyTorch reference", stacklevel=2)
        return "eager"


def timed(forward: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor], grad: bool) -> Callable[[], object]:
    """What one timing call runs: ``forward``, or forward then backward of a fixed gradient into ``inputs``."""
    if not grad:
        return forward

    def both():
        out = forward()
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    return both


def describe_choices() -> List[str]:
    """What ``auto`` runs on this machine (its GPU, or its CPU without one), for ``fisa-rt inspect``/``bench``/
    ``tune``."""
    table = local_table()
    damaged = f"; {table.path} was damaged ({table.damaged}): measured again at use" if table.damaged else ""
    if not table.choices:
        return [f"  kernel choices on {table.device_name}: none measured yet (each op and shape is measured at "
                f"first use; `fisa-rt tune --engine CKPT` measures ahead){damaged}"]
    how = "under CUDA graphs" if torch.cuda.is_available() else "wall clock; CPU training runs the references"
    where = f"not saved: {table.unsaved}" if table.unsaved else table.path
    return [f"  kernel choices on {table.device_name} (ms per call, {how}; {where}{damaged}):"] + [
        f"    {line}" for line in table.lines()
    ]


def reset_choices() -> ChoiceTable:
    """Forget this machine's measured choices (``fisa-rt tune --force``): an empty table replaces the file's."""
    old = local_table()
    table = ChoiceTable(old.device_name, None, old.timer)
    table.path = old.path
    install_table(table)
    return table
