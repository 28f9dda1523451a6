"""Which implementation of each fused op is fastest on this card, measured, per op and shape bucket.

``auto`` does not assume that a fused kernel wins (on an H200, cuDNN's flash SDPA beats the adapter kernel 2-4x
at ViT-B/16 shapes; benchmarks/results/2026-11-26-nvidia-h200.md). For each (op, dtype, fwd or fwd+bwd, shape
bucket) it times every candidate the op offers (``CANDIDATES`` of the op's module: the Triton kernel, SDPA's
backends, eager) on inputs of the bucket's shape, each replayed in a CUDA graph
(``triton.testing.do_bench_cudagraph``) so that launch cost, which a graph removes, does not decide. The
fastest is kept: by construction never slower than the best alternative measured. A candidate that fails to
run (an SDPA backend that does not take these shapes) is recorded with its error and never chosen.

On CPU (inference only, ``dispatch.measurable``) the same table is kept per CPU model and torch thread count, timed
on the wall clock (``wall_clock_timer``): a host has no launches to hide, and there SDPA's fused CPU kernel beats
the eager adapter attention 1.5-7x once the vocabulary is large, and loses at K = 1 with padded classes.

Choices are saved as JSON in ``$XDG_CACHE_HOME/fisa-rt/kernel-choices/`` (default ``~/.cache``), one file per
device name + torch + Triton (+ cuDNN) version, since any of them can change the winner; ``fisa-rt tune`` fills
it ahead of time, ``fisa-rt inspect``/``bench`` print it. The timer is a parameter (``ChoiceTable(timer=)``):
tests inject timings on CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

Timer = Callable[[Callable[[], object]], float]


def cuda_graph_timer(fn: Callable[[], object]) -> float:
    """Milliseconds per call of ``fn`` replayed in a CUDA graph (after one eager call, which also lets
    Triton's autotuner pick its configs outside the capture), on the current device."""
    import torch

    # the timer runs on a stream of its own: the candidate's inputs, made on this one, must be written first
    torch.cuda.current_stream().synchronize()
    try:
        import triton.testing
    except ImportError:  # torch without Triton (CPU wheels, some Jetson ones): SDPA and eager are still timed
        return _graph_replay_ms(fn)
    return float(triton.testing.do_bench_cudagraph(fn, rep=20))


def _graph_replay_ms(fn: Callable[[], object], calls: int = 20, replays: int = 10) -> float:
    """``do_bench_cudagraph`` without Triton: the median over ``replays`` of one graph of ``calls`` calls."""
    import torch

    with torch.cuda.stream(torch.cuda.Stream()):
        fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def wall_clock_timer(fn: Callable[[], object], budget_s: float = 0.05) -> float:
    """Median milliseconds per call of ``fn`` on the host, after one untimed call: at least 3 calls, then more
    until ``budget_s`` is spent (25 at most), so a first use on CPU costs tens of milliseconds per candidate."""
    fn()
    times: List[float] = []
    while len(times) < 3 or (len(times) < 25 and sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class NoCandidateRanError(RuntimeError):
    """Every candidate of a bucket failed to run (or to be timed)."""


@dataclass
class Choice:
    """The measured winner of one (op, bucket): ``times_ms`` per candidate that ran, ``failed`` the error of
    each that did not."""

    implementation: str
    times_ms: Dict[str, float]
    failed: Dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        others = ", ".join(f"{n} {t:.4g}" for n, t in sorted(self.times_ms.items(), key=lambda kv: kv[1])
                           if n != self.implementation)
        failed = f"; failed: {', '.join(sorted(self.failed))}" if self.failed else ""
        best = self.times_ms[self.implementation]
        return f"{self.implementation} {best:.4g} ms ({others or 'no alternative'}{failed})"


def bucket_key(op: str, dtype: str, grad: bool, shape: Iterable[int]) -> str:
    """``adapter_attention:float16:fwd:1,12,2048,256,64,0,1``: one table row."""
    return f"{op}:{dtype}:{'fwd+bwd' if grad else 'fwd'}:{','.join(str(int(n)) for n in shape)}"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:  # auto still chooses between SDPA and eager
        return "none"
    return triton.__version__


def cache_root() -> str:
    """``$XDG_CACHE_HOME/fisa-rt``, or ``~/.cache/fisa-rt`` where that is unset, empty or relative (the XDG
    specification ignores a relative path: it would put the caches in whatever folder a run starts from)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return os.path.join(xdg if os.path.isabs(xdg) else os.path.expanduser("~/.cache"), "fisa-rt")


def table_path(device_name: str, cache_dir: Optional[str] = None) -> str:
    """The file of ``device_name``'s choices: one per torch, Triton and, on a GPU, cuDNN version (cuDNN runs one
    of SDPA's candidates and is upgraded on its own)."""
    import torch

    versions = f"torch{torch.__version__}-triton{_triton_version()}"
    if not device_name.startswith("cpu") and torch.backends.cudnn.is_available():
        versions += f"-cudnn{torch.backends.cudnn.version()}"
    root = cache_dir or cache_root()
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{device_name}-{versions}")
    return os.path.join(root, "kernel-choices", f"{slug.strip('-')}.json")


class ChoiceTable:
    """The choices of one device, loaded from and saved to ``path`` (None: kept in memory only)."""

    def __init__(self, device_name: str, path: Optional[str] = None, timer: Timer = cuda_graph_timer):
        self.device_name = device_name
        self.path = path
        self.timer = timer
        self.choices: Dict[str, Choice] = {}
        self.unsaved: Optional[str] = None  # why the last save failed, for ``fisa-rt inspect``/``tune``
        self.damaged: Optional[str] = None  # what of the file was unreadable and so is measured again
        if path and os.path.exists(path):
            self.choices, self.damaged = _read(path)

    def get(self, key: str) -> Optional[Choice]:
        return self.choices.get(key)

    def decide(self, key: str, candidates: Mapping[str, Callable[[], object]]) -> Choice:
        """Time each candidate (a no-argument call on prepared inputs), keep and save the fastest."""
        times, failed = {}, {}
        for name, run in candidates.items():
            try:
                times[name] = self.timer(run)
            except Exception as exc:  # an SDPA backend refusing these shapes, a kernel that cannot compile
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        if not times:
            raise NoCandidateRanError(f"no implementation of {key} could be timed: {failed}")
        choice = Choice(min(times, key=times.get), times, failed)
        self.choices[key] = choice
        self.save()
        return choice

    def save(self) -> None:
        if not self.path:
            return
        data = {"device": self.device_name,
                "choices": {k: {"implementation": c.implementation, "times_ms": c.times_ms, "failed": c.failed}
                            for k, c in sorted(self.choices.items())}}
        tmp = None
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
            tmp = None
            self.unsaved = self.damaged = None
        except OSError as exc:
            # a cache is an optimisation, never the reason a run fails: the choice holds for this process and is
            # measured again in the next; `fisa-rt inspect`/`tune` say why it was not kept
            self.unsaved = f"{exc.strerror or exc} ({self.path})"
        finally:  # Ctrl-C or SIGTERM mid-write too: its random name is no later run's to recognise and remove
            if tmp and os.path.exists(tmp):
                os.remove(tmp)

    def lines(self) -> List[str]:
        """One line per choice, for ``fisa-rt inspect``/``bench``/``tune``."""
        return [f"{key}: {choice.describe()}" for key, choice in sorted(self.choices.items())]


def _read(path: str) -> Tuple[Dict[str, Choice], Optional[str]]:
    """The file's choices, and what of it was damaged (None: nothing). A damaged cache only costs a new
    measurement: the file is rewritten whole at the next choice."""
    try:
        with open(path) as f:
            rows = json.load(f)["choices"]
        if not isinstance(rows, dict):
            raise TypeError("'choices' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"unreadable ({type(exc).__name__})"
    choices = {}
    for key, row in rows.items():
        try:
            choices[key] = _choice(row)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    dropped = len(rows) - len(choices)
    return choices, f"{dropped} of {len(rows)} entries unreadable" if dropped else None


def _choice(row: Mapping[str, object]) -> Choice:
    times = {str(n): float(t) for n, t in row["times_ms"].items()}
    failed = {str(n): str(e) for n, e in row.get("failed", {}).items()}
    if row["implementation"] not in times or not all(math.isfinite(t) and t >= 0 for t in times.values()):
        raise ValueError("the chosen implementation has no valid time")
    return Choice(row["implementation"], times, failed)
