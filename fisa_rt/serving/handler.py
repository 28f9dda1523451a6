"""What the ``fisa_python`` model does with one execution's requests, free of Triton's types so it can be
tested without a server: each request is checked on its own (a bad one gets its own error and never fails the
others), the good ones are grouped by (vocabulary, task, canvas), and each group runs as one
``Segmenter.segment_batch``. A group whose batch fails is re-run one request at a time, so one request that
passes the checks but fails in the model still fails alone."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import FisaError, InputError, OutOfMemory, out_of_memory
from ..vocab import vocabulary as vocab
from . import protocol


@dataclass
class Request:
    image: Optional[np.ndarray]  # (1, H, W, 3) uint8 as sent
    classes: Optional[np.ndarray]  # (1, K) bytes
    parameters: Dict[str, object]


@dataclass
class Limits:
    max_pixels: int = 100_000_000  # as ``infer --max-pixels``: an image above it is refused before any work
    max_classes: int = 2048  # 20,000 classes would hold the instance for tens of seconds; refused instead
    embedding_cache: int = 64  # vocabularies whose embeddings stay in memory (least recently used dropped)


@dataclass
class _Checked:
    picture: np.ndarray
    names: Tuple[str, ...]
    task: str
    labels: str
    max_side: int


Outcome = Union[Dict[str, np.ndarray], FisaError]


def check_request(request: Request, limits: Limits) -> _Checked:
    """One request's inputs, or one InputError naming what is wrong with them."""
    task, labels, max_side = protocol.check_parameters(request.parameters)
    image, classes = request.image, request.classes
    if image is None or classes is None:
        raise InputError(f"a request needs both inputs {protocol.IMAGE!r} and {protocol.CLASSES!r}")
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3:
        raise InputError(f"image must be (1, H, W, 3) uint8 RGB; got {tuple(image.shape)} {image.dtype}")
    if 0 in image.shape:
        raise InputError(f"image is empty: {tuple(image.shape)} (H and W must be >= 1)")
    pixels = image.shape[1] * image.shape[2]
    if limits.max_pixels and pixels > limits.max_pixels:
        raise InputError(f"image is {image.shape[2]}x{image.shape[1]} = {pixels:,} pixels, more than this "
                         f"server's limit of {limits.max_pixels:,} (parameter max_pixels)")
    if classes.dtype != np.object_ or classes.ndim != 2 or classes.shape[0] != 1:
        raise InputError(f"classes must be (1, K) BYTES; got {tuple(classes.shape)} {classes.dtype}")
    if classes.shape[1] == 0:
        raise InputError("the class list is empty: send at least one class name")
    if classes.shape[1] > limits.max_classes:
        raise InputError(f"{classes.shape[1]:,} classes exceed this server's limit of {limits.max_classes:,}"
                         " (parameter max_classes)")
    try:
        names = tuple(c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in classes[0])
    except UnicodeDecodeError as exc:
        raise InputError(f"class names must be UTF-8: {exc}") from None
    return _Checked(image[0], names, task, labels, max_side)


class Handler:
    def __init__(self, segmenter, limits: Limits):
        self.segmenter = segmenter
        self.limits = limits
        self._embeddings: "OrderedDict[Tuple[str, ...], Tuple[vocab.Vocabulary, np.ndarray]]" = OrderedDict()

    def _vocabulary(self, names: Tuple[str, ...]):
        """(Vocabulary, embeddings) of ``names``, encoded once per vocabulary while it stays in the cache."""
        if names in self._embeddings:
            self._embeddings.move_to_end(names)
            return self._embeddings[names]
        vocabulary = vocab.Vocabulary(list(names))
        self.segmenter.set_vocabulary(vocabulary)
        self._embeddings[names] = (vocabulary, self.segmenter.text)
        while len(self._embeddings) > self.limits.embedding_cache:
            self._embeddings.popitem(last=False)
        return self._embeddings[names]

    def _run(self, group: Sequence[_Checked]) -> List[Dict[str, np.ndarray]]:
        vocabulary, embeddings = self._vocabulary(group[0].names)
        self.segmenter.set_vocabulary(vocabulary, embeddings)
        results = self.segmenter.segment_batch([c.picture for c in group], group[0].task)
        return [protocol.encode_result(r, c.labels, c.max_side) for r, c in zip(results, group)]

    def execute(self, requests: Sequence[Request]) -> List[Outcome]:
        outcomes: List[Optional[Outcome]] = [None] * len(requests)
        groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
        checked = {}
        for i, request in enumerate(requests):
            try:
                checked[i] = check_request(request, self.limits)
            except FisaError as exc:
                outcomes[i] = exc
                continue
            c = checked[i]
            # one batch per vocabulary and task; images of one canvas only, so batching changes no result
            canvas = self.segmenter._canvas_size([c.picture])
            groups.setdefault((c.names, c.task, canvas), []).append(i)
        for members in groups.values():
            try:
                for i, outputs in zip(members, self._run([checked[i] for i in members])):
                    outcomes[i] = outputs
            except Exception as exc:  # noqa: BLE001 -- a user's error or memory: anything else is raised
                outcome = failure(exc)  # here, so that a bug only a batch meets is not hidden by the runs alone
                if len(members) == 1:
                    outcomes[members[0]] = outcome
                    continue
                # the request that failed the batch, or a batch too big for the memory that fits one at a time
                for i in members:
                    try:
                        outcomes[i] = self._run([checked[i]])[0]
                    except Exception as single:  # noqa: BLE001 -- as above
                        outcomes[i] = failure(single)
        return outcomes


def failure(exc: Exception) -> FisaError:
    """What a request that raised ``exc`` is answered: a FisaError as it is, an allocation that failed as
    OutOfMemory (the server goes on); anything else, a bug, is raised again."""
    if isinstance(exc, FisaError):
        return exc
    what = out_of_memory(exc)
    if what is None:
        raise exc
    return OutOfMemory(f"out of memory ({what}); the server goes on: send fewer pixels or classes, or again later")
