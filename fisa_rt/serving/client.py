"""``Segmenter.from_server(url)``: the ``Segmenter`` API (``set_vocabulary``, ``segment``, ``segment_batch``) over
a Triton server serving fisa-rt, through ``tritonclient`` (HTTP or gRPC). Images are decoded here exactly as
local ``segment`` decodes them (EXIF orientation, 16-bit, transparency, ``max_pixels``), so the server sees the
same pixels and returns the same results."""

from __future__ import annotations

import json
import math
import numbers
import re
import threading
import time
from types import SimpleNamespace
from typing import List, Optional, Sequence, Union

import numpy as np

from ..errors import FisaError, InputError, MissingDependencyError
from ..runtime.images import DEFAULT_MAX_PIXELS, ImageInput, check_batch, picture_of
from ..vocab import vocabulary as vocab
from ..runtime.results import SegmentationResult
from ..runtime.timings import Timings
from . import protocol

PROTOCOLS = ("http", "grpc")


class ServerError(FisaError):
    """The server could not be reached, or failed (not the request's fault)."""


# HOST:PORT as tritonclient's URL parser (geventhttpclient's) takes it: an IPv6 HOST in brackets, a PORT in
# 1..65535 (checked in parse_url). An address it refuses leaves the HTTP client half made, and that client's
# __del__ then prints "Exception ignored ... no attribute '_closed'" to stderr: such an address never gets there.
_ADDRESS = re.compile(r"(\[[^\[\]\s/]+\]|[^\[\]\s/:?#@]+):([0-9]{1,5})")


def parse_url(url: str, protocol_name: Optional[str]) -> tuple:
    """(protocol, HOST:PORT) of ``url``: HOST:PORT, http://HOST:PORT or grpc://HOST:PORT."""
    if not isinstance(url, str):
        raise InputError(f"url must be a string HOST:PORT (e.g. localhost:8000); got {type(url).__name__}")
    scheme, _, address = url.rpartition("://")
    if scheme and scheme not in PROTOCOLS:
        raise InputError(f"server URL {url!r}: the scheme must be one of {PROTOCOLS}")
    if protocol_name is not None and protocol_name not in PROTOCOLS:
        raise InputError(f"protocol (--protocol) must be one of {PROTOCOLS}; got {protocol_name!r}")
    if scheme and protocol_name and scheme != protocol_name:
        raise InputError(f"server URL {url!r} says {scheme} but the protocol asked is {protocol_name}")
    match = _ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise InputError(f"url (--server) must be HOST:PORT with a PORT in 1..65535 (e.g. localhost:8000, [::1]:8000); "
                         f"got {url!r}")
    return scheme or protocol_name or "http", address


def _check_timeout(timeout) -> float:
    """``timeout`` in seconds as a float, or an InputError: tritonclient takes any value and fails (or waits
    forever) only at the first request, where the error reads as the server's fault."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout < math.inf:
        raise InputError(f"timeout must be a positive, finite number of seconds; got {timeout!r}")
    return float(timeout)


def _module(name: str):
    try:
        if name == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError:
        raise MissingDependencyError("the server client needs tritonclient: pip install 'tritonclient[http,grpc]' "
                                     "(or pip install -e '.[serve]')") from None
    return module


# seconds before each retry of a request the server answered UNAVAILABLE (HTTP 503): out of memory for that request
# now (fisa_rt.serving.handler.failure), or a model loading
RETRY_WAITS = (0.5, 1.0, 2.0)


class ServerSegmenter:
    def __init__(self, url: str, model: str = "fisa_python", protocol: Optional[str] = None, timeout: float = 120.0):
        self.protocol, self.address = parse_url(url, protocol)
        self.model = model
        self.timeout = _check_timeout(timeout)
        self._client_module = _module(self.protocol)
        from tritonclient.utils import InferenceServerException

        self._server_exception = InferenceServerException
        self._per_thread = threading.local()
        # HTTP: each thread's (thread, client, gevent hub), released once the thread has ended
        # (_release_ended_threads); the lock, because threads make their clients concurrently
        self._http_clients: List[tuple] = []
        self._http_clients_lock = threading.Lock()
        self.vocabulary: Optional[vocab.Vocabulary] = None
        self.default_vocabulary = None  # a server's model has no default: the client names its classes
        # what `infer`'s summary line prints for a local backend
        self.backend = SimpleNamespace(name=f"triton:{model}", device=f"{self.protocol}://{self.address}")
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.timings = Timings()

    @property
    def client(self):
        """One tritonclient per thread: the HTTP client runs on gevent, whose connections cannot move between
        threads ("cannot switch to a different thread")."""
        client = getattr(self._per_thread, "client", None)
        if client is None:
            if self.protocol == "http":
                import gevent

                self._release_ended_threads()
                client = self._client_module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout, network_timeout=self.timeout)
                with self._http_clients_lock:
                    self._http_clients.append((threading.current_thread(), client, gevent.get_hub()))
            else:
                client = self._client_module.InferenceServerClient(self.address)
            self._per_thread.client = client
        return client

    def _release_ended_threads(self) -> None:
        """Closes the HTTP clients of threads that have ended, and their gevent hubs, which nothing else
        destroys: each ended thread kept 4 file descriptors and a native thread (a web app's short-lived request
        threads ran out of descriptors). The hub of an ended thread is no one's, so it is destroyed from here."""
        with self._http_clients_lock:
            ended = [entry for entry in self._http_clients if not entry[0].is_alive()]
            self._http_clients = [entry for entry in self._http_clients if entry[0].is_alive()]
        for _, client, hub in ended:
            try:
                client.close()
                hub.destroy(destroy_loop=True)
            except Exception:  # noqa: BLE001 - a failed release is a leak, not the caller's error
                pass

    def check_ready(self) -> None:
        """ServerError now, naming the server, where it is unreachable or does not serve ``model``: the client
        is lazy, so `infer` otherwise found out at its first image, with its progress bar already drawn."""
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as exc:  # noqa: BLE001 - the transports raise their own types (gevent, grpc, socket)
            reason = (exc.message() if isinstance(exc, self._server_exception) else str(exc)) or type(exc).__name__
            raise ServerError(f"server {self.address} ({self.protocol}) unreachable or gone: {reason}") from None
        if not ready:
            raise ServerError(f"server {self.address} ({self.protocol}) has no model {self.model!r} ready "
                              "(see its log; fisa-rt export-triton names the models it writes)")

    def _live(self) -> bool:
        try:
            return bool(self.client.is_server_live(client_timeout=self.timeout))
        except Exception:  # noqa: BLE001 - the transports raise their own types: unreachable
            return False

    def set_vocabulary(self, classes: Union[Sequence[str], vocab.Vocabulary], embeddings=None) -> None:
        if embeddings is not None:
            raise InputError("a server encodes its vocabularies: pass class names, not embeddings")
        self.vocabulary = vocab.vocabulary_of(classes)

    def _inputs(self, picture: np.ndarray) -> list:
        m = self._client_module
        image = m.InferInput(protocol.IMAGE, [1, *picture.shape], "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(picture[None]))
        names = np.array([[n.encode("utf-8") for n in self.vocabulary.names]], dtype=np.object_)
        classes = m.InferInput(protocol.CLASSES, list(names.shape), "BYTES")
        classes.set_data_from_numpy(names)
        return [image, classes]

    def infer_raw(self, picture: np.ndarray, task: str, labels: str, max_side: int):
        """One request; the response, or InputError (the server refused the request) / ServerError."""
        parameters = {"task": task, "labels": labels, "max_side": max_side}
        protocol.check_parameters(parameters)
        names = [protocol.RESULT] + ([protocol.SEMANTIC, protocol.SEGMENT_MAP] if labels == "full" else [])
        outputs = [self._client_module.InferRequestedOutput(n) for n in names]
        inputs = self._inputs(picture)  # encoded once, for every try
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        for wait in (*RETRY_WAITS, None):
            try:
                return self.client.infer(self.model, inputs, outputs=outputs, parameters=parameters, **kwargs)
            except self._server_exception as exc:
                status = str(exc.status() or "")
                message = exc.message() or str(exc)
                if status in ("400", "StatusCode.INVALID_ARGUMENT"):
                    raise InputError(f"the server refused the request: {message}") from None
                unavailable = status in ("503", "StatusCode.UNAVAILABLE")
                if unavailable and self.protocol == "grpc" and not self._live():  # gRPC's word for no connection too
                    reason = f"unreachable or gone: {message}"
                    raise ServerError(f"server {self.address} ({self.protocol}) {reason}") from None
                if unavailable and wait is not None:
                    time.sleep(wait)  # short of memory for now, or its model loading: the same request again
                    continue
                tries = f" after {len(RETRY_WAITS) + 1} tries" if unavailable else ""
                raise ServerError(f"server {self.address} ({self.protocol}) failed{tries}: {message}") from None
            except Exception as exc:  # noqa: BLE001 - the transports raise their own types (gevent, grpc, socket)
                reason = str(exc) or type(exc).__name__
                raise ServerError(f"server {self.address} ({self.protocol}) unreachable or gone: {reason}") from None

    def segment(self, image: ImageInput, task: str = "panoptic", labels: str = "full",
                max_side: int = 0) -> SegmentationResult:
        """As ``Segmenter.segment``; ``labels="rle"`` / ``max_side`` shrink what travels (docs/serving.md)."""
        if self.vocabulary is None:
            raise InputError("no vocabulary set: call set_vocabulary([...]) first")
        picture = picture_of(image, self.max_pixels)
        start = time.perf_counter()
        response = self.infer_raw(picture, task, labels, max_side)
        body = json.loads(response.as_numpy(protocol.RESULT)[0])
        full = labels == "full"
        result = protocol.decode_result(
            picture, self.vocabulary.names, self.vocabulary.is_thing, task, body,
            response.as_numpy(protocol.SEMANTIC)[0] if full else None,
            response.as_numpy(protocol.SEGMENT_MAP)[0] if full else None,
        )
        self.timings.model += time.perf_counter() - start
        self.timings.images += 1
        return result

    def segment_batch(
        self, images: Sequence[ImageInput], task: str = "panoptic", **options
    ) -> List[SegmentationResult]:
        """One request per image: the server's dynamic batcher forms the batches."""
        check_batch(images)
        protocol.check_parameters({"task": task, **options})  # also for an empty batch, as the local one does
        return [self.segment(image, task, **options) for image in images]
