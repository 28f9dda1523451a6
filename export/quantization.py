"""fp32 portable ONNX -> int8 / fp8 Q/DQ ONNX through NVIDIA ModelOpt, calibrated on the user's images.

TensorRT 11 has no int8 calibrator: a strongly typed engine takes its int8 scales from explicit
QuantizeLinear / DequantizeLinear pairs in the ONNX (docs/design.md, "TensorRT 10.3 - 11.x"). ModelOpt
calibrates them on ONNX Runtime (CPU), so the Q/DQ graph is written, and checked, without TensorRT.

Calibration inputs are the runtime's: each picture resized and padded exactly as ``Segmenter`` does for the
model, the text side the embeddings of a vocabulary (a runtime input, so its range must be calibrated too),
the same whole vocabulary beside every image batch. ModelOpt's own ``calibration_data`` dict would split the
vocabulary into one slice per image batch (``calib_utils.CalibrationDataProvider`` splits every input along
axis 0), so the batches go through a reader instead.

The recipe (``RECIPE``) was chosen by measurement: ``scripts/int8-sensitivity.py``, docs/deploy.md "int8".
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fisa_rt.atomic import atomic_path
from fisa_rt.errors import InputError, MissingDependencyError, warn

from .modelopt_log import modelopt_messages

PRECISIONS = ("int8", "fp8")
ENOUGH_IMAGES = 100  # below this, activation ranges follow the few scenes given (issue 24: 1 scene -> cosine 0.94)
DEFAULT_COUNT = 256
STEP_IMAGES = 8  # images per calibration step: one ONNX Runtime call each


@dataclass(frozen=True)
class Scope:
    """One part of the model by module role. ``nodes``: a ``re.match`` pattern on node names, which the ONNX
    exporter writes from module paths (one pattern holds for every config: the CLIP image encoder's blocks are
    ``resblocks.N`` in a ViT, ``stages.N`` + the per-location CLIP ``head`` in a ConvNeXt). ``weights``: one on
    initializer names, for the nodes the exporter leaves without a module path (``node_Conv_157``: every
    depthwise convolution of fcclip-convnext-l), which are placed by the weights they read."""

    nodes: str
    weights: str


SCOPES = {
    "clip_encoder": Scope(r"/model/backbone/(resblocks\.\d+|stages\.\d+|head)/",
                          r"model\.backbone\.visual\.(transformer\.resblocks\.\d+|trunk\.(stages\.\d+|head)|head)\."),
    "seve": Scope(r"/model/backbone/seve\.\d+/", r"model\.backbone\.seve\.\d+\."),
    "classifier": Scope(r"/model/classifier/", r"model\.classifier\."),
    "neck": Scope(r"/model/mask_generator/neck/", r"model\.mask_generator\.neck\."),
    "mask_embed": Scope(r"/model/mask_generator/mask_embed/", r"model\.mask_generator\.mask_embed\."),
    "mask_generator": Scope(r"/model/mask_generator/", r"model\.mask_generator\."),
}


def in_scope(node, scope: Scope, initializers: Collection[str]) -> bool:
    """Whether ONNX ``node`` belongs to ``scope``: by its name where it has a module path, else by the
    weights (``initializers``) it reads."""
    if node.name.startswith("/"):
        return re.match(scope.nodes, node.name) is not None
    return any(re.match(scope.weights, name) for name in node.input if name in initializers)


def nodes_to_exclude(graph, scopes: Sequence[str]) -> List[str]:
    """ModelOpt's ``nodes_to_exclude`` (``re.match`` patterns) keeping ``scopes`` (SCOPES keys) of ``graph``
    in high precision: each scope's node-name pattern, and the exact name of each node without a module path
    whose weights belong to one."""
    initializers = {i.name for i in graph.initializer}
    unnamed = [n.name for n in graph.node if n.name and not n.name.startswith("/")
               and any(in_scope(n, SCOPES[s], initializers) for s in scopes)]
    return [SCOPES[s].nodes for s in scopes] + [re.escape(name) + "$" for name in unnamed]


@dataclass(frozen=True)
class QuantRecipe:
    """What ModelOpt quantises and how (``modelopt.onnx.quantization.quantize`` arguments).

    Weights are per output channel and activations per tensor, symmetric: ModelOpt's int8 path fixes both
    (``int8.py`` calls ORT's ``quantize_static(per_channel=True)``), which is also the only scheme TensorRT's
    int8 kernels take. ``calibration_method`` is "entropy" or "max": ModelOpt maps anything else,
    "percentile" included, to max.
    """

    # LayerNorm/Softmax: CLIP's outlier channels make their ranges unsafe; Add: the residual stream carries
    # those outliers; ReduceL2 & co. are never quantised by ModelOpt anyway
    op_types_to_exclude: Tuple[str, ...] = ("LayerNormalization", "Softmax", "Add")
    # module roles (SCOPES keys) kept in high precision: the CLIP image encoder and the classifier that
    # re-enters its last blocks carry the texture classes' small margins (docs/deploy.md)
    scopes_kept: Tuple[str, ...] = ("clip_encoder", "classifier")
    calibration_method: str = "max"
    # dtype of everything not quantised: fp16 as the fp16 engine has it (TensorRT runs the rest in fp16)
    high_precision: str = "fp16"
    # True: the attention MatMuls (Q.K^T, P.V) stay high precision (ModelOpt's ``disable_mha_qdq``)
    disable_mha_qdq: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.scopes_kept) - set(SCOPES))
        if unknown:
            raise InputError(f"unknown model parts {unknown} in scopes_kept; known: {sorted(SCOPES)}")

    def record(self) -> Dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


RECIPE = QuantRecipe()


@dataclass
class CalibrationSet:
    """Model inputs for calibration: ``image`` (N, 3, S, S) as the runtime feeds the engine, ``text`` the
    vocabulary's embeddings, ``seen`` (K,) bool for mask-average models; where they came from."""

    image: np.ndarray
    text: np.ndarray
    seen: Optional[np.ndarray] = None
    sources: List[str] = field(default_factory=list)
    vocabulary: str = ""

    def feeds(self, step: int = STEP_IMAGES) -> List[Dict[str, np.ndarray]]:
        extra = {} if self.seen is None else {"seen": self.seen}
        return [{"image": self.image[i : i + step], "text": self.text, **extra}
                for i in range(0, len(self.image), step)]

    def record(self) -> Dict[str, object]:
        return {"images": int(len(self.image)), "classes": int(len(self.text)), "vocabulary": self.vocabulary,
                "files": [os.path.basename(s) for s in self.sources[:20]] + (["..."] if len(self.sources) > 20 else [])}


def calibration_files(spec: Optional[str], count: int) -> List[str]:
    """The image files of ``--calibration DIR|GLOB`` (default: the bundled scenes), the first ``count`` in
    name order; a warning when fewer than ENOUGH_IMAGES are used."""
    from fisa_rt.runtime.assets import sample_images
    from fisa_rt.runtime.inputs import Source

    if count < 1:
        raise InputError(f"--calibration-count must be >= 1; got {count}")
    if spec is None:
        files = list(sample_images())
        where = "the bundled scenes (--calibration DIR|GLOB calibrates on your images)"
    else:
        source = Source(spec)
        if source.kind != "images":
            raise InputError(f"--calibration {spec}: give a folder of images or a glob, not a {source.kind}")
        files, where = source.items, spec
    files = files[:count]
    if len(files) < ENOUGH_IMAGES:
        warn(f"calibrating on {len(files)} images from {where}: fewer than {ENOUGH_IMAGES}, the int8 ranges may "
             "fit these images and not others")
    return files


def calibration_set(portable_onnx: str, files: Sequence[str], vocabulary, embeddings: np.ndarray,
                    trained_names: Sequence[str]) -> CalibrationSet:
    """Resize and pad ``files`` as the runtime does for ``portable_onnx`` (its manifest's resize rule) and
    pair them with the vocabulary's ``embeddings``."""
    from fisa_rt.vocab.prompts import seen_classes
    from fisa_rt.runtime.segmenter import Segmenter

    segmenter = Segmenter.from_engine(portable_onnx, backend="onnxruntime", device="cpu", cache_dir="")
    seen = None
    if "seen" in segmenter.backend.manifest.get("inputs", {}):
        seen = np.array(seen_classes(vocabulary.names, trained_names), bool)
    images = runtime_images(segmenter, files)
    return CalibrationSet(images, np.ascontiguousarray(embeddings, np.float32), seen, list(files),
                          vocabulary=f"{len(vocabulary.names)} classes")


def runtime_images(segmenter, files: Sequence[str]) -> np.ndarray:
    """(N, 3, S, S) model inputs of image ``files``: resized and padded by the runtime's own pre-processing
    (``Segmenter.prepare``, one image at a time), so calibration sees the pixels an engine will see."""
    from fisa_rt.runtime.images import load_image

    return np.concatenate([segmenter.prepare([load_image(f)]).batch.cpu().numpy() for f in files])


def _modelopt_quantize():
    try:
        from modelopt.onnx.quantization import quantize
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:
        from .mixed_precision import MODELOPT_HINT

        raise MissingDependencyError(f"int8/fp8 Q/DQ needs NVIDIA ModelOpt. {MODELOPT_HINT}") from None
    return quantize, CalibrationDataReader


def quantize_onnx(onnx_path: str, out_path: str, precision: str, calibration: CalibrationSet,
                  recipe: QuantRecipe = RECIPE) -> Dict[str, object]:
    """Writes the Q/DQ ONNX; returns the manifest's ``quantization`` record (with ModelOpt's warnings, each
    once)."""
    import onnx

    if precision not in PRECISIONS:
        raise InputError(f"Q/DQ precision must be one of {PRECISIONS}; got {precision!r}")
    quantize, reader_base = _modelopt_quantize()

    class Reader(reader_base):
        """ModelOpt reads the batches several times (MHA and GEMV detection, then calibration)."""

        def __init__(self, feeds):
            self.feeds = feeds
            self.rewind()

        def get_next(self):
            return next(self._next, None)

        def get_first(self):
            return self.feeds[0]

        def rewind(self):
            self._next = iter(self.feeds)

    quiet = ("modelopt", "modelopt.onnx", "modelopt.onnx.quantization")
    # ModelOpt writes intermediate files beside its input and its output: both in a private folder, then the
    # result moved beside out_path and renamed, so an interrupted run leaves no partial file there
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory() as work, modelopt_messages(quiet) as messages:
        source, result = os.path.join(work, "model.onnx"), os.path.join(work, "model.qdq.onnx")
        model = onnx.load(onnx_path)
        onnx.save(model, source)
        excluded = nodes_to_exclude(model.graph, recipe.scopes_kept)
        quantize(
            onnx_path=source, output_path=result, quantize_mode=precision,
            calibration_data_reader=Reader(calibration.feeds()), calibration_method=recipe.calibration_method,
            calibration_eps=["cpu"], op_types_to_exclude=list(recipe.op_types_to_exclude),
            nodes_to_exclude=excluded or None, high_precision_dtype=recipe.high_precision,
            disable_mha_qdq=recipe.disable_mha_qdq, log_level="WARNING",
        )
        shutil.move(result, tmp)
    model = onnx.load(out_path, load_external_data=False)
    counts = {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {"tool": "modelopt.onnx.quantization", "precision": precision, "recipe": recipe.record(),
            "calibration": calibration.record(), "qdq_nodes": counts,
            "unnamed_nodes_kept": len(excluded) - len(recipe.scopes_kept),
            "quantized_ops": quantized_op_counts(model),
            "kept_products_in_int8": kept_products_in_int8(model.graph, recipe.scopes_kept), "modelopt_log": messages}


def kept_products_in_int8(graph, scopes: Sequence[str]) -> List[str]:
    """Names of the matrix products and convolutions of ``scopes`` (meant to stay high precision) that read
    a dequantised tensor: empty when the scopes held (the check that found fcclip-convnext-l's unnamed
    convolutions in int8)."""
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and dequantized & set(n.input)
            and any(in_scope(n, SCOPES[s], weights) for s in scopes)]


def quantized_op_counts(model) -> Dict[str, int]:
    """op type -> how many nodes of it read a DequantizeLinear output (compute in int8/fp8 on TensorRT)."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: Dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized.intersection(node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
