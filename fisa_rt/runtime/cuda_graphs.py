"""CUDA-graph replay of the PyTorch backend's forward: one graph per (batch, canvas, vocabulary-size bucket).

Why: on a desktop GPU the eager forward of fisa-vit-b16 at 640 px costs 14.3 ms of wall time for 8.0 ms of
kernels, and a replay of the same forward 8.3 ms (benchmarks/results/2026-11-26-nvidia-h200.md): Python's
launches, not the GPU, set the pace. A replay launches the whole forward at once.

How (torch.cuda.graphs' recipe): each key gets static input buffers (images, text padded to the bucket,
``valid`` and ``seen`` flags) and, after a warm-up on a side stream, one capture whose outputs are the static
output buffers; a call copies its inputs into the buffers and replays. Vocabularies of one bucket (the next
power of two, at least ``MIN_BUCKET``) share a graph: a new one refills the text buffer, with no recapture;
the padded classes are masked out inside the model (``text_valid``), so the scores of the real classes are
those of the unpadded run. A capture that fails (an op that syncs with the host) is said in one line per reason,
and that key runs eagerly from then on; the others keep their graphs. An error of the warm-up (the eager
forward: a bad input, too little memory) is the caller's, raised as it would be without graphs.

The capture and replay are a seam (:class:`CaptureSeam`): ``TorchGraphs`` on CUDA, and on CPU the tests
inject one that records captures and replays by calling the captured function again into the same buffers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from ..errors import warn

# The smallest vocabulary bucket: 1..8 classes share one graph (a padded class costs one text row).
MIN_BUCKET = 8

# Eager runs on the side stream before capture: the first runs pick cuDNN/cuBLAS algorithms, compile
# Triton kernels and fill caches (the position table), none of which may happen inside a capture.
WARMUP_RUNS = 3

# Graphs kept per model: each holds its buffers and its share of the pool. A variable canvas (FC-CLIP's
# padding to multiples of 32) can meet many shapes; past this many, a new shape runs eagerly unless a graph has
# gone unused for IDLE_CALLS calls, which it then replaces.
MAX_GRAPHS = 16

# Calls without a replay after which a graph may make way for a new shape. Not plain LRU: a stream cycling
# through MAX_GRAPHS + 1 shapes would then recapture (3 warm-ups and a capture) on every call; a graph this long
# unused belongs to a workload that has moved on (a server whose vocabularies or canvases changed), and kept it
# would run the new one eagerly for good.
IDLE_CALLS = 1000

Forward = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor], Tuple[torch.Tensor, ...]]


def class_bucket(classes: int) -> int:
    """The padded vocabulary size ``classes`` runs at: the next power of two, at least ``MIN_BUCKET``."""
    if classes < 1:
        raise ValueError(f"a vocabulary has at least one class; got {classes}")
    return max(MIN_BUCKET, 1 << (classes - 1).bit_length())


class CaptureSeam:
    """How a function is captured and replayed. ``warm_up`` runs it eagerly; ``capture`` records it and
    returns (handle, outputs); ``replay(handle)`` reruns the recording, writing into the same outputs."""

    def warm_up(self, fn: Callable[[], object]) -> None:
        raise NotImplementedError

    def capture(self, fn: Callable[[], Tuple[torch.Tensor, ...]]) -> Tuple[object, Tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def replay(self, handle: object) -> None:
        raise NotImplementedError


class TorchGraphs(CaptureSeam):
    """``torch.cuda.CUDAGraph`` with a private memory pool shared by this runner's graphs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    def warm_up(self, fn):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for _ in range(WARMUP_RUNS):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        # on this runner's stream, so on its device (torch's default capture stream is made on whichever
        # device was current the first time any graph was captured)
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            outputs = fn()
        return graph, outputs

    def replay(self, handle):
        handle.replay()


@dataclass
class _Graph:
    images: torch.Tensor  # (B, 3, H, W) as the caller's images
    text: torch.Tensor  # (bucket, D) or (bucket, M, D), zero past the vocabulary
    valid: torch.Tensor  # (bucket,) bool: True for the vocabulary's classes
    seen: Optional[torch.Tensor]  # (bucket,) bool, where the model reads it
    handle: object
    outputs: Tuple[torch.Tensor, torch.Tensor]  # mask logits (B, Q, h, w), scores (B, Q, bucket + 1)
    # the text and seen tensors the buffers were filled from, with their versions (in-place changes counted):
    # held, so no other tensor can take their place
    filled_from: tuple = ()
    last_call: int = 0  # the runner's call count at this graph's last replay

    def holds(self, text: torch.Tensor, seen: Optional[torch.Tensor]) -> bool:
        """Whether the text, valid and seen buffers already hold ``text`` and ``seen`` (the backend hands the same
        tensors while the vocabulary stays: ``backends.DeviceInputs``)."""
        if not self.filled_from:
            return False
        held_text, text_version, held_seen, seen_version = self.filled_from
        return (held_text is text and text_version is not None and text_version == _version(text)
                and held_seen is seen and (seen is None or seen_version == _version(seen)))


def _version(tensor: Optional[torch.Tensor]) -> Optional[int]:
    """How many in-place changes ``tensor`` has had; None for an inference tensor (made under
    ``torch.inference_mode``), which does not count them, and so is never taken as unchanged."""
    return None if tensor is None or tensor.is_inference() else tensor._version


class GraphRunner:
    """Runs ``forward(images, text, seen, text_valid) -> (mask_logits, scores)`` by graph replay.

    ``forward`` must mask the classes where ``text_valid`` is False (scores exactly 0 there); ``__call__``
    returns the scores of the ``K`` real classes and void, (B, Q, K + 1), as a fresh tensor, and the mask
    logits as a fresh tensor: a later call does not overwrite what an earlier one returned.
    """

    def __init__(self, forward: Forward, seam: CaptureSeam):
        self.forward = forward
        self.seam = seam
        self.graphs: Dict[tuple, _Graph] = {}
        self.failed: Dict[tuple, str] = {}  # keys whose capture failed, and why: they run eagerly
        self.captures = 0
        self.evictions = 0
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def failure(self) -> Optional[str]:
        """Why the last capture that failed did (None: none has)."""
        return next(reversed(self.failed.values()), None)

    def key(self, images: torch.Tensor, text: torch.Tensor, seen: Optional[torch.Tensor]) -> tuple:
        return (tuple(images.shape), images.dtype, class_bucket(text.shape[0]), tuple(text.shape[1:]), seen is None)

    def __call__(self, images: torch.Tensor, text: torch.Tensor, seen: Optional[torch.Tensor] = None):
        # one call at a time: two threads share a key's static buffers (one got the other's scores)
        with self._lock:
            return self._replay(images, text, seen)

    def _replay(self, images: torch.Tensor, text: torch.Tensor, seen: Optional[torch.Tensor]):
        self.calls += 1
        key = self.key(images, text, seen)
        graph = self.graphs.get(key)
        if graph is None:
            if key in self.failed or not self._room():
                return self._eager(images, text, seen)
            graph = self._capture(key, images, text, seen)
            if graph is None:
                return self._eager(images, text, seen)
            self.graphs[key] = graph
        graph.last_call = self.calls
        self._fill(graph, images, text, seen)
        self.seam.replay(graph.handle)
        mask_logits, scores = graph.outputs
        K = text.shape[0]
        return mask_logits.clone(), torch.cat([scores[..., :K], scores[..., -1:]], -1)

    def _room(self) -> bool:
        """Whether a new graph may be captured: under ``MAX_GRAPHS``, or after dropping the least recently replayed
        graph where it has been idle for ``IDLE_CALLS`` calls (its buffers go back to the pool the next capture
        draws from)."""
        if len(self.graphs) < MAX_GRAPHS:
            return True
        key, idlest = min(self.graphs.items(), key=lambda item: item[1].last_call)
        if self.calls - idlest.last_call < IDLE_CALLS:
            return False
        del self.graphs[key]
        self.evictions += 1
        return True

    def _eager(self, images, text, seen):
        return self.forward(images, text, seen, torch.ones(text.shape[0], dtype=torch.bool, device=text.device))

    # Outside inference mode (under no_grad) whatever the caller's: the buffers and outputs are then normal tensors,
    # which a later call outside torch.inference_mode fills in place (inference tensors refuse that: segmenting once
    # under inference_mode, then without it, failed)
    @torch.inference_mode(False)
    @torch.no_grad()
    def _capture(self, key: tuple, images, text, seen) -> Optional[_Graph]:
        """The graph of ``key``, or None where capturing failed. The warm-up is the eager forward: what it raises
        (a bad input, too little memory) is raised to the caller as without graphs, and changes nothing here."""
        bucket = class_bucket(text.shape[0])
        graph = _Graph(
            images=torch.empty_like(images),
            text=text.new_zeros((bucket, *text.shape[1:])),
            valid=torch.zeros(bucket, dtype=torch.bool, device=text.device),
            seen=None if seen is None else torch.zeros(bucket, dtype=torch.bool, device=text.device),
            handle=None,
            outputs=(),
        )
        self._fill(graph, images, text, seen)

        def run():
            return self.forward(graph.images, graph.text, graph.seen, graph.valid)

        self.seam.warm_up(run)
        try:
            graph.handle, graph.outputs = self.seam.capture(run)
        except Exception as error:  # capture refuses host syncs and some ops: say which, run this key eagerly
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            if reason not in self.failed.values():
                B, _, H, W = images.shape
                warn(f"CUDA graphs are off for batch {B} at {H}x{W}, up to {bucket} classes ({reason}); running "
                     "eagerly (--no-cuda-graphs silences this)")
            self.failed[key] = reason
            return None
        self.captures += 1
        return graph

    @staticmethod
    def _fill(graph: _Graph, images, text, seen) -> None:
        """Copy a call's inputs into the graph's static buffers; classes past ``text`` are padding."""
        graph.images.copy_(images, non_blocking=True)
        if graph.holds(text, seen):  # four to six copies and fills fewer, of the launches that set the pace
            return
        K = text.shape[0]
        graph.text[:K].copy_(text, non_blocking=True)
        graph.text[K:].zero_()
        graph.valid[:K] = True
        graph.valid[K:] = False
        if graph.seen is not None:
            graph.seen[:K].copy_(seen, non_blocking=True)
            graph.seen[K:] = False
        graph.filled_from = (text, _version(text), seen, _version(seen))
