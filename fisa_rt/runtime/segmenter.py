"""The Python API: ``Segmenter.from_engine(path)`` -> ``set_vocabulary(...)`` -> ``segment(image)``.

    seg = Segmenter.from_engine("build/fisa-tiny-synthetic.portable.ort.onnx")
    seg.set_vocabulary(["red star", "wavy wall"])        # or a Vocabulary, or precomputed embeddings
    result = seg.segment("scene.png")                   # path, PIL.Image or (H, W, 3) uint8 RGB
    result.overlay().save("overlay.png"); result.save("out/", "scene")

Pre-processing (resize by the model config's rule — by default the longer side to the engine's size —
and pad to its square canvas, or, where the backend takes a variable canvas, to the batch's largest image
rounded up to a multiple of 32 as FC-CLIP does) and
post-processing (crop, resize back, Mask2Former's semantic/panoptic/instance inference) are the same for
every backend and run on the backend's device. An image larger than the model's input is post-processed
at the model's input size and its label maps resized to the image (memory bounded; docs/design.md).

A Segmenter holds its vocabulary: give each thread its own, or hold a lock around ``set_vocabulary`` and
``segment`` (the CUDA-graph runner takes one call at a time). A caller's ``torch.autocast`` stops at its
stages (``backends.own_precision``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import OPENAI_MEAN, PostprocessConfig, ResizeConfig, parse_section
from ..errors import CheckpointError, ConfigError, InputError, warn
from ..postprocess import (
    InstanceResult,
    PanopticResult,
    best_proposal_labels,
    cpu_threads_for,
    instance_inference,
    owned_areas,
    panoptic_proposals,
    panoptic_segments,
    resize_labels,
    restore_mask_logits,
    semantic_inference,
    to_host,
    working_size,
)
from ..preprocess import padded_canvas, resize_and_pad, resize_work, resized_shape, upload
from ..vocab import vocabulary as vocab
from ..vocab.prompts import seen_classes
from .backends import Backend, open_backend, own_precision, resolve_artefact
from .images import DEFAULT_MAX_PIXELS, ImageInput, check_batch, checked_max_pixels, picture_of
from .results import SegmentationResult
from .text_encoder import TextEncoder
from .threads import apply_torch_threads, resolve_threads
from .timings import Timings

TASKS = ("semantic", "panoptic", "instance")
@dataclass
class Prepared:
    """A pre-processed batch: the model input on the backend's device, and where each picture lies in it."""

    batch: torch.Tensor  # (B, 3, H, W) uint8 (float32 [0, 255] on a variable canvas)
    contents: List[Tuple[int, int]]  # (h, w) of each resized picture, top left of the canvas
    canvas: Tuple[int, int]  # (H, W)


class Segmenter:
    def __init__(self, backend: Backend, artefact: str, cache_dir: Optional[str] = None):
        self.backend = backend
        self.text_encoder = TextEncoder(backend, artefact)
        self.cache_dir = cache_dir
        config = backend.manifest.get("config") or {}
        try:
            self.postprocess = parse_section(PostprocessConfig, "postprocess", config.get("postprocess") or {})
            # the model config's resize rule (artefacts from before it existed: the longest-edge rule)
            self.resize = parse_section(ResizeConfig, "resize", config.get("resize") or {})
        except ConfigError as exc:  # an edited manifest: the model's own config is checked when it is made
            raise CheckpointError(f"the manifest of {artefact}: {exc}; rebuild the artefact with "
                                  "`python export/build_engine.py`") from None
        self.image_mean = tuple(config.get("image_mean") or OPENAI_MEAN)
        self.pad_colour = self.resize.pad_colour(self.image_mean)
        trained = backend.manifest.get("training_vocabulary") or {}
        try:
            self.default_vocabulary = (
                vocab.Vocabulary(trained["names"], trained.get("is_thing")) if trained.get("names") else None
            )
        except InputError as exc:  # an edited manifest: what a vocabulary of the user's would be told
            raise CheckpointError(f"the manifest of {artefact}: training_vocabulary: {exc}") from None
        # the classes the mask generator was trained on (FC-CLIP: COCO panoptic's 133): a class naming one of
        # them is "seen" and gets the mask-average head's ensemble_alpha instead of ensemble_beta
        self.trained_names: List[str] = list(trained.get("names") or [])
        # both read-only (set_vocabulary): np.array(...) for a copy to change
        self.seen_in_training: Optional[np.ndarray] = None  # (K,) bool per class of the vocabulary
        self.vocabulary: Optional[vocab.Vocabulary] = None
        self.text: Optional[np.ndarray] = None  # (K, D) or (K, M, D) float32 embeddings
        self.timings = Timings()
        self.max_pixels = DEFAULT_MAX_PIXELS

    @property
    def max_pixels(self) -> Optional[int]:
        """Larger image files or PIL images are refused (0 or None: no limit)."""
        return self._max_pixels

    @max_pixels.setter
    def max_pixels(self, value: Optional[int]) -> None:
        self._max_pixels = checked_max_pixels(value)  # a bad limit is refused here, not blamed on each image

    @classmethod
    def from_engine(
        cls,
        path: str,
        backend: Optional[str] = None,
        device: Optional[str] = None,
        cache_dir: Optional[str] = None,
        threads: Optional[int] = None,
        cuda_graphs: Optional[bool] = None,
        compile: bool = False,
    ) -> "Segmenter":
        """``threads``: CPU threads for torch (process-wide: torch has one pool) and for ONNX Runtime; default
        the cores this process may use (fisa_rt.runtime.threads). ``cuda_graphs`` (PyTorch backend; default: on
        CUDA) replays the model as CUDA graphs; ``compile`` torch.compiles it first (fisa_rt.runtime.cuda_graphs,
        fisa_rt.runtime.compiled)."""
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"engine must be a path; got {type(path).__name__}")
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise InputError(f"cache_dir must be a path; got {type(cache_dir).__name__}")
        threads = resolve_threads(threads)
        apply_torch_threads(threads)
        path = resolve_artefact(os.fspath(path), backend)
        cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        return cls(open_backend(path, backend, device, threads, cuda_graphs, compile), path, cache_dir)

    @classmethod
    def from_server(cls, url: str, model: str = "fisa_python", protocol: Optional[str] = None, **options):
        """A client of a Triton server serving fisa-rt (``fisa-rt export-triton``) with this class's
        ``set_vocabulary`` / ``segment`` / ``segment_batch``; ``url``: HOST:PORT, http://... or grpc://...
        (docs/serving.md)."""
        from ..serving.client import ServerSegmenter

        return ServerSegmenter(url, model=model, protocol=protocol, **options)

    def set_vocabulary(
        self, classes: Union[Sequence[str], vocab.Vocabulary], embeddings: Optional[np.ndarray] = None
    ) -> None:
        vocabulary = vocab.vocabulary_of(classes)
        if embeddings is None:
            embeddings = self.text_encoder.encode(vocabulary, self.cache_dir)
        embeddings = vocab.check_embeddings(embeddings, len(vocabulary.names))
        self.backend.check_text(embeddings)
        seen = np.array(seen_classes(vocabulary.names, self.trained_names), bool)
        # read-only: a backend keeps their device copies while they are the vocabulary (backends.DeviceInputs);
        # check_embeddings made this array, so no caller's array changes mode
        embeddings.setflags(write=False)
        seen.setflags(write=False)
        self.vocabulary, self.text, self.seen_in_training = vocabulary, embeddings, seen
        head = ((self.backend.manifest.get("config") or {}).get("classifier") or {}).get("head")
        if head == "mask-average" and self.seen_in_training.any() and not self.backend.applies_seen:
            warn(f"this {self.backend.name} artefact scores every class as unseen (ensemble beta); "
                 f"{int(self.seen_in_training.sum())} of these classes were seen in training (alpha): "
                 "the .safetensors applies it")

    def _picture(self, image: ImageInput) -> np.ndarray:
        return picture_of(image, self.max_pixels)

    def _canvas_size(self, pictures: Sequence[np.ndarray]) -> Tuple[int, int]:
        """(H, W) a batch of ``pictures`` is padded to: the backend's S x S canvas; where the backend takes a
        variable canvas (resize.pad "divisible"), FC-CLIP's: the largest resized picture, rounded up to
        resize.divisible (fisa_rt.preprocess.padded_canvas)."""
        S = self.backend.image_size
        divisible = self.resize.divisible if self.backend.variable_canvas else None
        return padded_canvas([resized_shape(*p.shape[:2], S, self.resize) for p in pictures], S, divisible)

    def _canvas(self, image: np.ndarray, canvas: Optional[Tuple[int, int]] = None):
        """(1, 3, H, W) model input of ``image`` on a ``canvas`` (H, W) (default: its own, see _canvas_size),
        and the (h, w) of the resized image at its top left. The uint8 pixels cross to the backend's device
        once (from pinned memory on CUDA); resizing and padding run there."""
        S = self.backend.image_size
        canvas = canvas or self._canvas_size([image])
        size = resized_shape(*image.shape[:2], S, self.resize)
        pixels = upload(image, self.backend.device).permute(2, 0, 1)
        if self.backend.variable_canvas:
            # FC-CLIP's padding exactly: float pixels in [0, 255], padded with the mean colour unrounded, which
            # the model's normalisation turns into exactly 0, as detectron2 pads the normalised image with 0
            # (a uint8 mean colour is up to 0.0075 off)
            fill = (torch.tensor(self.resize.pad_fill(self.image_mean), dtype=torch.float32) * 255.0).tolist()
            return resize_and_pad(pixels, size, canvas, fill, torch.float32)[None], size
        return resize_and_pad(pixels, size, canvas, self.pad_colour)[None], size

    def segment(self, image: ImageInput, task: str = "panoptic") -> SegmentationResult:
        return self.segment_batch([image], task)[0]

    def segment_batch(self, images: Sequence[ImageInput], task: str = "panoptic") -> List[SegmentationResult]:
        if task not in TASKS:
            raise InputError(f"task must be one of {TASKS}; got {task!r}")
        check_batch(images)
        if not images:
            return []
        if self.text is None:
            if self.default_vocabulary is None:
                raise InputError("no vocabulary set: call set_vocabulary([...]) first")
            self.set_vocabulary(self.default_vocabulary)
        sync = torch.cuda.synchronize if self.backend.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        pictures = []
        for index, image in enumerate(images):
            try:
                pictures.append(self._picture(image))
            except InputError as exc:
                if len(images) == 1:
                    raise
                raise InputError(f"images[{index}]: {exc}") from None  # an array's error cannot name it
        prepared = self.prepare(pictures)
        sync()
        t1 = time.perf_counter()
        raw = self.backend.run(prepared.batch, self.text, self.seen_in_training)
        sync()
        t2 = time.perf_counter()
        results = self.merge(pictures, raw, prepared, task)
        sync()
        t3 = time.perf_counter()
        self.timings.preprocess += t1 - t0
        self.timings.model += t2 - t1
        self.timings.postprocess += t3 - t2
        self.timings.images += len(pictures)
        return results

    def prepare(self, pictures: Sequence[np.ndarray]) -> "Prepared":
        """The pre-processing stage: (H, W, 3) uint8 pictures -> the backend's input batch on its device.
        ``segment_batch`` times this, the backend's ``run`` and :meth:`merge` as its three stages; the
        stage benchmarks (benchmarks/test_latency.py) time the same three calls."""
        canvas = self._canvas_size(pictures)
        S = self.backend.image_size
        # one torch thread for an ordinary photo, as in post-processing: a second thread costs each small op
        # a scheduler slice whenever the other core is busy (docs/design.md, "Stage and vocabulary cost on CPU")
        work = sum(resize_work(p.shape[:2], resized_shape(*p.shape[:2], S, self.resize)) for p in pictures)
        with own_precision(self.backend.device), cpu_threads_for(work, self.backend.device):
            canvases, contents = zip(*(self._canvas(p, canvas) for p in pictures))
            return Prepared(torch.cat(canvases), list(contents), canvas)

    def merge(self, pictures: Sequence[np.ndarray], raw, prepared: "Prepared", task: str) -> List[SegmentationResult]:
        """The post-processing stage: the backend's raw outputs -> one result per picture, on the host."""
        # (B, Q, K + 1) logarithms: microseconds on one core, and a scheduler slice on two (7 ms at K = 1203)
        with own_precision(raw.class_scores.device):
            with cpu_threads_for(raw.class_scores.numel(), raw.class_scores.device):
                class_logits = raw.class_logits()
            return [
                self._postprocess(picture, class_logits[b], raw.mask_logits[b], content, task, prepared.canvas)
                for b, (picture, content) in enumerate(zip(pictures, prepared.contents))
            ]

    def _postprocess(self, picture, class_logits, mask_logits, content, task, canvas=None) -> SegmentationResult:
        """``mask_logits`` (Q, h, w) as the model predicted them on its ``canvas`` (H, W) (default: 4 x the
        masks' size), whose top-left ``content`` holds the resized picture; merged at the working size, on
        the device the model ran on; label maps come back at the picture's size in one copy."""
        work = working_size(content, picture.shape[:2])
        # the semantic (Q, K) x (Q, pixels) product; the panoptic merge reads each proposal's mask once
        classes = 1 if task == "panoptic" else class_logits.shape[-1]
        with cpu_threads_for(class_logits.shape[0] * classes * work[0] * work[1], mask_logits.device):
            return self._merge(picture, class_logits, mask_logits, content, work, task, canvas)

    def _merge(self, picture, class_logits, mask_logits, content, work, task, canvas=None) -> SegmentationResult:
        names, things = self.vocabulary.names, self.vocabulary.is_thing
        size = picture.shape[:2]
        canvas = canvas or tuple(4 * n for n in mask_logits.shape[-2:])  # masks are at stride 4
        logits = restore_mask_logits(mask_logits.float(), canvas, content, work)
        if task == "panoptic":
            semantic, panoptic = self._panoptic(class_logits, logits, size)
            return SegmentationResult(picture, names, things, semantic, panoptic)
        semantic = resize_labels(semantic_inference(class_logits, logits).label_map, size)
        if task == "semantic":
            return SegmentationResult(picture, names, things, *to_host([semantic]))
        found = instance_inference(class_logits, logits, things, self.postprocess)
        semantic, masks, labels, scores = to_host([semantic, resize_labels(found.masks, size), found.labels,
                                                   found.scores])
        instances = InstanceResult(*(torch.from_numpy(a) for a in (masks, labels, scores)))
        return SegmentationResult(picture, names, things, semantic, None, instances)

    def _panoptic(self, class_logits, logits, size):
        """Panoptic segments and, as the semantic labels, each pixel's owning proposal's class: no (Q, K) x
        (Q, pixels) product (the cost stays flat in K). With no proposal kept, the best proposal's class over all
        of them (`best_proposal_labels`), still flat in K.
        Both maps are made at the working size and only then resized to ``size``: a nearest resize copies
        pixels, so the labels are the same, and the host makes one pass over the image's pixels per map, not
        five (a 6000 x 4000 photo: ~500 ms of NumPy, against the model's ~20)."""
        found = panoptic_proposals(class_logits, logits, self.postprocess)
        kept = found.scores.shape[0]
        areas, output_areas = owned_areas(found.owners, kept), owned_areas(found.owners, kept, size)
        fallback = [] if kept else [best_proposal_labels(class_logits, logits)]
        owners, labels, scores, own_area, areas, output_areas, *semantic = to_host(
            [found.owners, found.labels, found.scores, found.own_area, areas, output_areas, *fallback]
        )
        panoptic = panoptic_segments(
            owners, labels.tolist(), scores.tolist(), own_area.tolist(), areas.tolist(), self.vocabulary.is_thing,
            self.postprocess, output_areas.tolist(),
        )
        semantic = torch.from_numpy(semantic[0] if semantic else labels[np.abs(owners) - 1])
        segment_map = resize_labels(panoptic.segment_map, size)
        return resize_labels(semantic, size).numpy(), PanopticResult(segment_map, panoptic.segments)

    def info(self) -> Dict[str, object]:
        return {"backend": self.backend.name, "device": str(self.backend.device), "image_size": self.backend.image_size}
