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
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import OPENAI_MEAN, PostprocessConfig, ResizeConfig
from ..errors import InputError, warn
from ..postprocess import (
    cpu_threads_for,
    instance_inference,
    panoptic_inference,
    resize_labels,
    resized_areas,
    restore_mask_logits,
    semantic_inference,
    working_size,
)
from ..preprocess import padded_canvas, resized_shape
from ..vocab import vocabulary as vocab
from ..vocab.prompts import seen_classes
from .backends import Backend, open_backend, resolve_artefact
from .images import DEFAULT_MAX_PIXELS, check_pixels, decode_image, load_image
from .results import SegmentationResult
from .text_encoder import TextEncoder

TASKS = ("semantic", "panoptic", "instance")
ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image]  # a file, or decoded RGB pixels


@dataclass
class Timings:
    """Accumulated seconds per stage and images seen."""

    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    images: int = 0

    def summary(self) -> str:
        n = max(self.images, 1)
        total = self.preprocess + self.model + self.postprocess
        return (
            f"{self.images} images: pre-process {1000 * self.preprocess / n:.1f} ms, model {1000 * self.model / n:.1f} ms, "
            f"post-process {1000 * self.postprocess / n:.1f} ms per image; {self.images / total if total else 0:.1f} FPS end to end"
        )


class Segmenter:
    def __init__(self, backend: Backend, artefact: str, cache_dir: Optional[str] = None):
        self.backend = backend
        self.text_encoder = TextEncoder(backend, artefact)
        self.cache_dir = cache_dir
        post = (backend.manifest.get("config") or {}).get("postprocess") or {}
        self.postprocess = PostprocessConfig(**post)
        # the model config's resize rule (artefacts from before it existed: the longest-edge rule)
        config = backend.manifest.get("config") or {}
        self.resize = ResizeConfig(**(config.get("resize") or {}))
        self.image_mean = tuple(config.get("image_mean") or OPENAI_MEAN)
        self.pad_colour = self.resize.pad_colour(self.image_mean)
        trained = backend.manifest.get("training_vocabulary") or {}
        self.default_vocabulary = (
            vocab.Vocabulary(trained["names"], trained["is_thing"]) if trained.get("names") else None
        )
        # the classes the mask generator was trained on (FC-CLIP: COCO panoptic's 133): a class naming one of
        # them is "seen" and gets the mask-average head's ensemble_alpha instead of ensemble_beta
        self.trained_names: List[str] = list(trained.get("names") or [])
        self.seen_in_training: Optional[np.ndarray] = None  # (K,) bool per class of the vocabulary
        self.vocabulary: Optional[vocab.Vocabulary] = None
        self.text: Optional[np.ndarray] = None
        self.timings = Timings()
        self.max_pixels = DEFAULT_MAX_PIXELS  # larger image files or PIL images are refused (None: no limit)

    @classmethod
    def from_engine(
        cls, path: str, backend: Optional[str] = None, device: Optional[str] = None, cache_dir: Optional[str] = None
    ) -> "Segmenter":
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"engine must be a path; got {type(path).__name__}")
        path = resolve_artefact(os.fspath(path))
        return cls(open_backend(path, backend, device), path, cache_dir)

    def set_vocabulary(
        self, classes: Union[Sequence[str], vocab.Vocabulary], embeddings: Optional[np.ndarray] = None
    ) -> None:
        if isinstance(classes, str) or not isinstance(classes, (vocab.Vocabulary, Sequence)):
            raise InputError(f"classes must be a list of class names or a Vocabulary; got {type(classes).__name__}")
        vocabulary = classes if isinstance(classes, vocab.Vocabulary) else vocab.Vocabulary(list(classes))
        if embeddings is None:
            embeddings = self.text_encoder.encode(vocabulary, self.cache_dir)
        embeddings = vocab.check_embeddings(embeddings, len(vocabulary.names))
        self.backend.check_text(embeddings)
        self.vocabulary, self.text = vocabulary, embeddings
        self.seen_in_training = np.array(seen_classes(vocabulary.names, self.trained_names), bool)
        head = ((self.backend.manifest.get("config") or {}).get("classifier") or {}).get("head")
        if head == "mask-average" and self.seen_in_training.any() and not self.backend.applies_seen:
            warn(f"this {self.backend.name} artefact scores every class as unseen (ensemble beta); "
                 f"{int(self.seen_in_training.sum())} of these classes were seen in training (alpha): "
                 "the .safetensors applies it")

    def _picture(self, image: ImageInput) -> np.ndarray:
        """Any accepted image -> (H, W, 3) uint8 RGB, decoded as ``infer`` decodes files."""
        if isinstance(image, (str, os.PathLike)):
            return load_image(image, self.max_pixels)
        if isinstance(image, Image.Image):
            check_pixels(image.size, self.max_pixels, "given as a PIL.Image")
            return decode_image(image)
        if not isinstance(image, np.ndarray):
            kind = type(image).__name__
            raise InputError(f"an image must be a path, a PIL.Image or an (H, W, 3) uint8 RGB array; got {kind}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise InputError(f"image must be (H, W, 3) uint8 RGB with H, W >= 1; got {image.shape} {image.dtype}")
        return image

    def _canvas_size(self, pictures: Sequence[np.ndarray]) -> Tuple[int, int]:
        """(H, W) a batch of ``pictures`` is padded to: the backend's S x S canvas; where the backend takes a
        variable canvas (resize.pad "divisible"), FC-CLIP's: the largest resized picture, rounded up to
        resize.divisible (fisa_rt.preprocess.padded_canvas)."""
        S = self.backend.image_size
        divisible = self.resize.divisible if self.backend.variable_canvas else None
        return padded_canvas([resized_shape(*p.shape[:2], S, self.resize) for p in pictures], S, divisible)

    def _canvas(self, image: np.ndarray, canvas: Optional[Tuple[int, int]] = None):
        """(1, 3, H, W) model input of ``image`` on a ``canvas`` (H, W) (default: its own, see _canvas_size),
        and the (h, w) of the resized image at its top left."""
        S = self.backend.image_size
        canvas = canvas or self._canvas_size([image])
        h, w = resized_shape(*image.shape[:2], S, self.resize)
        pixels = image if image.flags.writeable else image.copy()  # frames from PIL are read-only
        tensor = torch.from_numpy(pixels).to(self.backend.device).permute(2, 0, 1)[None]
        # one channel at a time in float: a third of the memory of the whole image, the same values
        channels = (tensor[:, c : c + 1].float() for c in range(3))  # a generator: one float channel alive
        resized = torch.cat(
            [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True) for x in channels], 1
        )
        pixels = resized.round().clamp(0, 255)
        if self.backend.variable_canvas:
            # FC-CLIP's padding exactly: float pixels in [0, 255], padded with the mean colour unrounded, which
            # the model's normalisation turns into exactly 0, as detectron2 pads the normalised image with 0
            # (a uint8 mean colour is up to 0.0075 off)
            fill = self.resize.pad_fill(self.image_mean)
            colour = torch.tensor(fill, dtype=torch.float32, device=self.backend.device) * 255.0
        else:
            colour = torch.tensor(self.pad_colour, dtype=torch.uint8, device=self.backend.device)
            pixels = pixels.to(torch.uint8)
        padded = colour.view(1, 3, 1, 1).repeat(1, 1, *canvas)
        padded[..., :h, :w] = pixels
        return padded, (h, w)

    def segment(self, image: ImageInput, task: str = "panoptic") -> SegmentationResult:
        return self.segment_batch([image], task)[0]

    def segment_batch(self, images: Sequence[ImageInput], task: str = "panoptic") -> List[SegmentationResult]:
        if task not in TASKS:
            raise InputError(f"task must be one of {TASKS}; got {task!r}")
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)) or not isinstance(images, Sequence):
            raise InputError(f"segment_batch takes a list of images; got {type(images).__name__} (use segment for one)")
        if not images:
            return []
        if self.text is None:
            if self.default_vocabulary is None:
                raise InputError("no vocabulary set: call set_vocabulary([...]) first")
            self.set_vocabulary(self.default_vocabulary)
        sync = torch.cuda.synchronize if self.backend.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        pictures = [self._picture(i) for i in images]
        canvas = self._canvas_size(pictures)
        canvases, contents = zip(*(self._canvas(p, canvas) for p in pictures))
        batch = torch.cat(canvases)
        sync()
        t1 = time.perf_counter()
        raw = self.backend.run(batch, self.text, self.seen_in_training)
        sync()
        t2 = time.perf_counter()
        class_logits = raw.class_logits()
        results = [
            self._postprocess(picture, class_logits[b], raw.mask_logits[b], content, task, canvas)
            for b, (picture, content) in enumerate(zip(pictures, contents))
        ]
        sync()
        t3 = time.perf_counter()
        self.timings.preprocess += t1 - t0
        self.timings.model += t2 - t1
        self.timings.postprocess += t3 - t2
        self.timings.images += len(pictures)
        return results

    def _postprocess(self, picture, class_logits, mask_logits, content, task, canvas=None) -> SegmentationResult:
        """``mask_logits`` (Q, h, w) as the model predicted them on its ``canvas`` (H, W) (default: 4 x the
        masks' size), whose top-left ``content`` holds the resized picture; merged at the working size, label
        maps returned at the picture's."""
        work = working_size(content, picture.shape[:2])
        multiply_adds = class_logits.numel() * work[0] * work[1]  # the semantic (Q, K) x (Q, pixels) product
        with cpu_threads_for(multiply_adds, mask_logits.device):
            return self._merge(picture, class_logits, mask_logits, content, work, task, canvas)

    def _merge(self, picture, class_logits, mask_logits, content, work, task, canvas=None) -> SegmentationResult:
        names, things = self.vocabulary.names, self.vocabulary.is_thing
        size = picture.shape[:2]
        canvas = canvas or tuple(4 * n for n in mask_logits.shape[-2:])  # masks are at stride 4
        logits = restore_mask_logits(mask_logits.float(), canvas, content, work)
        semantic = resize_labels(semantic_inference(class_logits, logits).label_map, size).cpu().numpy()
        panoptic = instances = None
        if task == "panoptic":
            panoptic = panoptic_inference(class_logits, logits, things, self.postprocess)
            if tuple(panoptic.segment_map.shape) != size:
                areas = resized_areas(panoptic.segment_map, size, len(panoptic.segments) + 1).tolist()
                for segment in panoptic.segments:
                    segment.area = areas[segment.id]
                panoptic.segment_map = resize_labels(panoptic.segment_map, size)
        if task == "instance":
            instances = instance_inference(class_logits, logits, things, self.postprocess)
            instances.masks = resize_labels(instances.masks, size)
        return SegmentationResult(picture, names, things, semantic, panoptic, instances)

    def info(self) -> Dict[str, object]:
        return {"backend": self.backend.name, "device": str(self.backend.device), "image_size": self.backend.image_size}
