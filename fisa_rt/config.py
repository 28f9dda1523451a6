"""One configuration object per FISA model.

A model is a JSON file in ``fisa_rt/model_configs/`` (as open_clip keeps ``model_configs/*.json``),
read into the :class:`FisaConfig` dataclass tree below and passed down to every module that needs
it. Nothing reads global flags: two models with different configs can live in one process.

The names of architectures (this registry) are kept apart from weights: ``clip.pretrained`` names an
open_clip pretrained tag or a local file, and FISA checkpoints carry their own config.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, Tuple

from .errors import ConfigError

# OpenAI CLIP's normalisation, which every open_clip model named here was trained with.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

CLASSIFIER_HEADS = ("mask-attention", "mask-average")
PIXEL_DECODERS = ("transformer", "deformable")
GENERATOR_CLASS_HEADS = ("linear", "mask-pooled")
POOLED_INPUTS = ("embeddings", "features")
MASK_WEIGHTINGS = ("binary", "sigmoid")
RESIZE_MODES = ("longest_edge", "shortest_edge")
SYNONYM_MODES = ("mean", "max")
RESIZE_PADS = ("canvas", "divisible")
# Which implementation of the fused ops runs (fisa_rt.kernels.dispatch). Kept here, not in kernels/, so that
# reading a config imports no torch.
KERNEL_MODES = ("auto", "triton", "reference")
# what `train adapt --trainable` may train (fisa_rt.train.trainer)
TRAINABLE_PRESETS = ("simo", "simo-only", "frozen", "full")
# CPU threads a runtime may be given (--threads): above today's largest CPUs (384 cores, 768 hardware threads);
# 100000 made glibc abort and the run hang. Here, not in runtime.threads, so the CLI's parser needs no torch.
MAX_THREADS = 1024


@dataclass
class ClipConfig:
    # open_clip architecture name ("ViT-B-16", "convnext_large_d_320"), or a name of our own when
    # `custom_config` describes the architecture.
    model_name: str
    # open_clip pretrained tag ("laion2b_s29b_b131k_ft_soup") or a local weights file; None builds the
    # architecture with random weights (tests, or a model this project trains from scratch).
    pretrained: Optional[str] = None
    # An inline open_clip model config ({"embed_dim", "vision_cfg", "text_cfg"}) for architectures that
    # open_clip does not ship, such as the tiny CLIP this project trains itself.
    custom_config: Optional[Dict[str, Any]] = None


@dataclass
class SeveConfig:
    # Where the text-conditioned adapters run: after these transformer blocks (ViT) or these
    # stages (ConvNeXt), 0-based. Early layers, so visual features carry the classes from the start.
    layers: List[int] = field(default_factory=list)
    # Attention heads of each adapter; the visual width must divide by it.
    num_heads: int = 8
    # Initial value of the adapter's gate (tanh(gate) scales its output). 0 makes an untrained
    # adapter an exact identity, so the pre-trained backbone is untouched at the start.
    gate_init: float = 0.0


@dataclass
class MaskGeneratorConfig:
    # Transformer width of the pixel and transformer decoders.
    hidden_dim: int = 256
    # Number of mask proposals (object queries).
    num_queries: int = 100
    # Transformer-decoder layers; each attends to one of the three coarsest scales in turn.
    dec_layers: int = 6
    # Encoder layers of the pixel decoder: on the stride-32 features ("transformer"), or on the
    # stride-8/16/32 features ("deformable").
    enc_layers: int = 2
    num_heads: int = 8
    # FFN width of the transformer decoder (and of the "transformer" pixel decoder's encoder).
    dim_feedforward: int = 1024
    # Channels of the per-pixel embeddings that mask embeddings are dotted with.
    mask_dim: int = 256
    # "transformer": transformer encoder on stride 32 + FPN (small configs). "deformable":
    # Mask2Former's multi-scale deformable-attention pixel decoder (FC-CLIP's weights).
    pixel_decoder: str = "transformer"
    # Deformable encoder: FFN width (Mask2Former fixes 1024) and sampling points per head and level.
    deformable_ffn: int = 1024
    deformable_points: int = 4
    # Query -> CLIP-space class embedding. "linear": one linear layer. "mask-pooled": FC-CLIP's MLP
    # over the query plus its mask-pooled per-pixel features, with the generator's own temperature.
    class_head: str = "linear"


@dataclass
class ClassifierConfig:
    # "mask-attention": mask tokens attend to image tokens under their masks (FISA/MaskCLIP/MAFT,
    # ViT only). "mask-average": FC-CLIP's mask-weighted average pooling of dense CLIP embeddings.
    head: str = "mask-attention"
    # mask-attention: how many of the last ViT blocks carry mask tokens.
    num_mask_layers: int = 3
    # Mask logits above this count as inside the mask once resized to the token grid.
    mask_threshold: float = 0.0
    # mask-average: "binary" (FC-CLIP) or "sigmoid" soft weights.
    mask_weighting: str = "binary"
    # mask-average: pool per-location CLIP "embeddings" (CLIP head applied at each location, one fused
    # pass), or the last stage's "features" and apply the CLIP head to each pooled vector (FC-CLIP's
    # order; the head is non-linear, so the two differ).
    pooled_input: str = "embeddings"
    # mask-average: FC-CLIP's geometric ensemble weights of the out-of-vocabulary (CLIP) score, for
    # classes seen in training (alpha) and not seen (beta).
    ensemble_alpha: float = 0.4
    ensemble_beta: float = 0.8


@dataclass
class SimoConfig:
    # Parameter-name prefixes that stay trainable during FISA adaptation; everything else is frozen.
    trainable: List[str] = field(
        default_factory=lambda: [
            "classifier.mask_q_proj",
            "classifier.void_embedding",
            "classifier.logit_scale",
            "backbone.seve",
        ]
    )


@dataclass
class TextConfig:
    # Prompt-template set used to embed class names (see fisa_rt.vocab.prompts.PROMPT_TEMPLATES).
    templates: str = "vild"
    # Class names encoded per text-tower call.
    batch_size: int = 256
    # How a class's comma-separated synonyms score. "mean": one (K, D) row per class, the mean of every
    # (synonym, template) prompt. "max": FC-CLIP's get_classification_logits, one row per synonym (its
    # templates averaged) in a (K, M, D) tensor, and a class scores its best synonym.
    synonyms: str = "mean"


@dataclass
class PostprocessConfig:
    # Mask2Former's defaults: keep a proposal if its class score exceeds this (panoptic/semantic
    # ignores it) ...
    object_mask_threshold: float = 0.8
    # ... and if at least this fraction of its mask survives overlap with higher-scoring segments.
    overlap_threshold: float = 0.8
    # Instances kept per image.
    instance_topk: int = 100


@dataclass
class ResizeConfig:
    # How an image becomes the model's input at inference (and evaluation); the result sits top-left on the
    # square ``image_size`` canvas (or, with ``pad`` "divisible", a smaller one), padded. "longest_edge": the
    # longer side to ``image_size`` (fisa-rt's rule, also the base scale of training's jitter). "shortest_edge":
    # detectron2's ResizeShortestEdge as FC-CLIP tests (MIN_SIZE_TEST / MAX_SIZE_TEST): the shorter side to
    # ``short``, scaled down further if the longer would pass ``max_size``; ``image_size`` must then hold
    # ``max_size`` rounded up to ``divisible``.
    mode: str = "longest_edge"
    short: int = 800
    max_size: int = 1333
    # detectron2's size_divisibility: the padded input's sides are multiples of it.
    divisible: int = 32
    # Pad with the mean colour (image_mean; rounded to uint8 on the square canvas, within 0.01 of 0 once
    # normalised; unrounded, so exactly 0, on a "divisible" canvas), as detectron2's ImageList pads the
    # normalised image with 0; else with black.
    pad_mean: bool = False
    # How far a batch is padded at inference and evaluation (training always uses the square canvas).
    # "canvas": to the fixed ``image_size`` square, the only input an exported graph (ONNX, TensorRT) takes.
    # "divisible": as FC-CLIP, whose FCCLIP.forward (fcclip/fcclip.py) batches with detectron2's
    # ``ImageList.from_tensors(images, size_divisibility)`` (detectron2/structures/image_list.py): to the
    # batch's largest resized height and width, each rounded up to a multiple of ``divisible``, bottom and
    # right. Only the PyTorch backend (.safetensors) of a ConvNeXt model takes such a variable canvas
    # (``Backend.variable_canvas``); exported artefacts keep the square.
    pad: str = "canvas"

    def pad_colour(self, image_mean) -> Tuple[int, int, int]:
        """uint8 RGB of the canvas outside the resized image."""
        return tuple(round(255 * m) for m in image_mean) if self.pad_mean else (0, 0, 0)

    def pad_fill(self, image_mean) -> Tuple[float, float, float]:
        """RGB in [0, 1] of the padding, unrounded: the mean colour (exactly 0 once normalised) or black."""
        return tuple(image_mean) if self.pad_mean else (0.0, 0.0, 0.0)

    def canvas(self) -> int:
        """The smallest square canvas side that holds every output of the "shortest_edge" rule."""
        return -(-self.max_size // self.divisible) * self.divisible


@dataclass
class FisaConfig:
    name: str
    clip: ClipConfig
    # Side of the square training/inference image; ViT position embeddings are resized to it.
    image_size: int
    seve: SeveConfig = field(default_factory=SeveConfig)
    mask_generator: MaskGeneratorConfig = field(default_factory=MaskGeneratorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    simo: SimoConfig = field(default_factory=SimoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    image_mean: Tuple[float, float, float] = OPENAI_MEAN
    image_std: Tuple[float, float, float] = OPENAI_STD
    # Which implementation of the fused ops runs (fisa_rt.kernels.dispatch): "auto" = on CUDA, per op and
    # shape, the fastest of the Triton kernel, SDPA and eager as timed on the card; PyTorch references
    # elsewhere. "triton" or "reference" forces one.
    kernels: str = "auto"

    def __post_init__(self):
        if self.kernels == "onnx":
            # Before the export switch became a context (fisa_rt.kernels.onnx_ops.fused_nodes), "onnx" was a
            # kernel mode that ran the references in PyTorch; configs saved with it load as exactly that.
            warnings.warn(
                'kernels="onnx" is deprecated: the fused ONNX nodes are an export-time context now; '
                'loading it as "reference"',
                DeprecationWarning,
                stacklevel=2,
            )
            self.kernels = "reference"
        if self.kernels not in KERNEL_MODES:
            raise ConfigError(f"kernels must be one of {KERNEL_MODES}, got {self.kernels!r}")
        if self.classifier.head not in CLASSIFIER_HEADS:
            raise ConfigError(f"classifier.head must be one of {CLASSIFIER_HEADS}, got {self.classifier.head!r}")
        if self.classifier.mask_weighting not in MASK_WEIGHTINGS:
            raise ConfigError(
                f"classifier.mask_weighting must be one of {MASK_WEIGHTINGS}, got {self.classifier.mask_weighting!r}"
            )
        generator = self.mask_generator
        for value, valid, key in (
            (generator.pixel_decoder, PIXEL_DECODERS, "mask_generator.pixel_decoder"),
            (generator.class_head, GENERATOR_CLASS_HEADS, "mask_generator.class_head"),
            (self.classifier.pooled_input, POOLED_INPUTS, "classifier.pooled_input"),
            (self.text.synonyms, SYNONYM_MODES, "text.synonyms"),
        ):
            if value not in valid:
                raise ConfigError(f"{key} must be one of {valid}, got {value!r}")
        self._check_sizes()
        if self.image_size <= 0 or self.image_size % 32:
            raise ConfigError(
                f"image_size must be a positive multiple of 32 (the coarsest feature stride), got {self.image_size}"
            )
        resize = self.resize
        if resize.mode not in RESIZE_MODES:
            raise ConfigError(f"resize.mode must be one of {RESIZE_MODES}, got {resize.mode!r}")
        if resize.pad not in RESIZE_PADS:
            raise ConfigError(f"resize.pad must be one of {RESIZE_PADS}, got {resize.pad!r}")
        if resize.pad == "divisible" and (resize.divisible < 32 or resize.divisible % 32):
            raise ConfigError(
                f"resize.pad 'divisible' needs resize.divisible a multiple of 32 (the coarsest feature stride); "
                f"got {resize.divisible}"
            )
        if resize.mode == "shortest_edge":
            if not 0 < resize.short <= resize.max_size or resize.divisible < 1:
                raise ConfigError(f"resize needs 0 < short <= max_size and divisible >= 1; got {resize}")
            if self.image_size < resize.canvas():
                raise ConfigError(
                    f"image_size {self.image_size} cannot hold the resize rule's largest output (long side "
                    f"{resize.max_size}, padded to {resize.divisible}): use image_size {resize.canvas()}"
                )
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)

    def _check_sizes(self) -> None:
        """Sizes and counts below which a model cannot be built or run: without this, torch failed deep in a
        layer's constructor ("negative dimension") or at the first forward (an empty interpolation)."""
        sections = {"": self, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                 if dataclasses.is_dataclass(getattr(self, f.name))}}
        for path, minimum in _MINIMA.items():
            section, _, key = path.rpartition(".")
            value = getattr(sections[section], key)
            if type(value) is not int or value < minimum:
                raise ConfigError(f"{path} must be a whole number >= {minimum}, got {value!r}")
        generator = self.mask_generator
        if generator.hidden_dim % generator.num_heads:
            raise ConfigError(f"mask_generator.hidden_dim {generator.hidden_dim} must divide by mask_generator."
                              f"num_heads {generator.num_heads}")
        for key in ("image_mean", "image_std"):
            values = getattr(self, key)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"{key} must be three numbers (R, G, B), got {values!r}")
        if not all(self.image_std):
            raise ConfigError(f"image_std must have no zero (images are divided by it), got {self.image_std!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FisaConfig":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        nested = {
            "clip": ClipConfig,
            "seve": SeveConfig,
            "mask_generator": MaskGeneratorConfig,
            "classifier": ClassifierConfig,
            "simo": SimoConfig,
            "text": TextConfig,
            "postprocess": PostprocessConfig,
            "resize": ResizeConfig,
        }
        unknown = set(data) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(sections)}")
        _check_scalars(cls, data, "")
        kwargs = {}
        for key, value in data.items():
            if key in nested:
                kwargs[key] = parse_section(nested[key], key, value)
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"incomplete model config: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "FisaConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config is not valid JSON: {exc}") from None


def parse_section(section_cls, key: str, value: Any):
    """One config section from its JSON object, every fault a ConfigError naming the section and the key."""
    if not isinstance(value, dict):
        raise ConfigError(f"config section {key!r} must be an object, got {type(value).__name__}")
    valid = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(value) - valid
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} in config section {key!r}; valid keys: {sorted(valid)}")
    _check_scalars(section_cls, value, f"{key}.")
    try:
        return section_cls(**value)
    except TypeError as exc:
        raise ConfigError(f"config section {key!r}: {exc}") from None


# What a JSON value of each scalar field's type must be (a float field takes an int: a hand-written 1 is 1.0).
_SCALARS = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
            "bool": ((bool,), "true or false")}


def _check_scalars(section_cls, values: Dict[str, Any], prefix: str) -> None:
    """A scalar of the wrong type (``"image_size": "128"``, hand-edited) named here, not by whatever first
    computes with it; annotations are strings here (``from __future__ import annotations``)."""
    for f in dataclasses.fields(section_cls):
        if f.name not in values or f.type not in _SCALARS:
            continue
        (types, expected), value = _SCALARS[f.type], values[f.name]
        # true is an int to isinstance, but no image size
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"{prefix}{f.name} must be {expected}, got {value!r}")


# The least each size or count may be ("section.key"; "" is FisaConfig's own).
_MINIMA = {
    "image_size": 32,
    "mask_generator.hidden_dim": 1, "mask_generator.num_queries": 1, "mask_generator.dec_layers": 0,
    "mask_generator.enc_layers": 0, "mask_generator.num_heads": 1, "mask_generator.dim_feedforward": 1,
    "mask_generator.mask_dim": 1, "mask_generator.deformable_ffn": 1, "mask_generator.deformable_points": 1,
    "seve.num_heads": 1, "classifier.num_mask_layers": 1, "text.batch_size": 1, "postprocess.instance_topk": 1,
    "resize.short": 1, "resize.max_size": 1, "resize.divisible": 1,
}


def list_models() -> List[str]:
    """Names of the shipped model configs."""
    folder = resources.files("fisa_rt") / "model_configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def get_model_config(name: str) -> FisaConfig:
    """The shipped config called ``name``, or the JSON file ``name`` ends in ``.json`` (``fisa-rt config``'s
    output, edited: open_clip's way of adding a model); unknown names fail with the list of valid ones."""
    names = list_models()
    if name in names:
        return FisaConfig.from_json((resources.files("fisa_rt") / "model_configs" / f"{name}.json").read_text())
    if not name.endswith(".json"):
        raise ConfigError(f"unknown model config {name!r}; available: {', '.join(names)}, or a .json file")
    try:
        with open(name) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read model config {name}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return FisaConfig.from_json(text)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
