"""One interface over every artefact: ``run(images, text) -> RawOutput``.

``images`` (B, 3, S, S) uint8 on the backend's device (a torch tensor; with ``variable_canvas``, (B, 3, H, W)
uint8 or float in [0, 255]), ``text`` (K, D) float32; the
outputs are the exported graph's: mask logits (B, Q, S/4, S/4) and class scores (B, Q, K+1) with void
last, as torch tensors on the backend's device, so post-processing runs where the model ran.

* ``.onnx``           -> ONNX Runtime (TensorRT EP, CUDA EP where present, else CPU)
* ``.engine``/``.plan`` -> TensorRT (checks the engine's TensorRT version and GPU against its manifest)
* ``.safetensors``    -> PyTorch, Triton kernels on CUDA (the export wrapper itself, so its outputs are
  the graph's by construction)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..devices import torch_device
from ..onnxruntime_session import inference_session
from ..errors import (
    CheckpointError, EngineFailure, InputError, MissingDependencyError, OutOfMemory, byte_size, first_line,
    missing_file_error, out_of_memory, warn,
)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
SUFFIXES = {".safetensors": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


@dataclass
class RawOutput:
    mask_logits: torch.Tensor
    class_scores: torch.Tensor  # probabilities, void last

    def class_logits(self) -> torch.Tensor:
        """Log-probabilities in fp32: what the post-processing (which applies softmax) takes."""
        return self.class_scores.float().clamp_min(1e-12).log()


def _suffixes_of(backend: str) -> str:
    return ", ".join(s for s, b in SUFFIXES.items() if b == backend)


def _check_backend(backend: Optional[str]) -> None:
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"backend (--backend) must be one of {BACKENDS}; got {backend!r}")


def backend_for(path: str, backend: Optional[str] = None) -> str:
    suffix = os.path.splitext(path)[1].lower()
    _check_backend(backend)
    if backend is not None:
        # --backend is for artefacts named otherwise; a known suffix of another backend is a wrong pairing
        if SUFFIXES.get(suffix, backend) != backend:
            raise InputError(f"{path} is an artefact of the {SUFFIXES[suffix]} backend ({suffix}); "
                             f"the {backend} backend runs {_suffixes_of(backend)}")
        return backend
    if not os.path.exists(path):
        raise missing_file_error(path, "engine")
    if suffix not in SUFFIXES:
        raise InputError(f"cannot tell the backend of {path}: expected {', '.join(SUFFIXES)} "
                         "(or name its backend: backend= / --backend)")
    return SUFFIXES[suffix]


def own_precision(device: torch.device):
    """A caller's torch.autocast stops here: pre- and post-processing keep float32 buffers (semantic and instance
    post-processing failed under a bf16 autocast), vocabulary embeddings are encoded (and cached on disk) in
    float32, and a CUDA graph is captured in the backend's precision only. ``TorchBackend(..., autocast=)`` is how
    to run the model in 16 bits."""
    return torch.autocast(device.type, enabled=False)


class DeviceInputs:
    """The device copies of a backend's vocabulary inputs (text rows, seen flags), kept while the same read-only
    host array comes back. The Segmenter's are read-only (``set_vocabulary``), so they cannot have changed since:
    per call each was a copy from pageable memory, which waits for the stream, and under CUDA graphs a refill of
    the text buffer (the runner skips it for the same tensor, ``cuda_graphs``). A writable array is copied at
    every call: it may have changed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.held: Dict[str, Tuple[np.ndarray, torch.Tensor]] = {}  # role -> (host array, its device copy)

    def __call__(self, role: str, source: np.ndarray, rows: np.ndarray, dtype: Optional[torch.dtype] = None
                 ) -> torch.Tensor:
        """``rows`` (``source`` or a view of it, as the artefact takes it) on the device, as ``dtype``; ``source``,
        the caller's array, is the one whose identity is kept."""
        if source.flags.writeable:  # shared with the array on the CPU, as before: no copy there
            return torch.from_numpy(rows).to(self.device, dtype)
        held = self.held.get(role)
        if held is None or held[0] is not source:  # held, the array cannot be freed and its id reused
            # torch.tensor: from_numpy warns of a read-only array; a normal tensor even under inference_mode, so
            # the graph runner sees its in-place changes
            with torch.inference_mode(False):
                held = self.held[role] = (source, torch.tensor(rows, device=self.device, dtype=dtype))
        return held[1]


class Backend:
    name: str
    device: torch.device
    manifest: Dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    def _profile_max(self, name: str) -> Optional[int]:
        profile = (self.manifest.get("tensorrt") or {}).get("profiles", {}).get(name)
        return None if profile is None else int(profile["max"])

    @property
    def max_classes(self) -> Optional[int]:
        return self._profile_max("classes")

    @property
    def synonyms(self) -> str:
        """The model's text.synonyms: "max" models take (K, M, D) text, one row per synonym."""
        return ((self.manifest.get("config") or {}).get("text") or {}).get("synonyms", "mean")

    def check_text(self, text: np.ndarray) -> np.ndarray:
        """``text`` in the layout the artefact takes, or one InputError: (K, D), or (K, M, D) for "max"
        models, which also take (K, D) as one row per class."""
        if text.ndim not in (2, 3) or 0 in text.shape:
            raise InputError(f"text embeddings must be (K >= 1, D) or (K, M, D); got {text.shape}")
        if text.shape[-1] != self.embed_dim:
            raise InputError(f"text embeddings have dimension {text.shape[-1]}, but this engine takes {self.embed_dim}")
        if self.max_classes is not None and text.shape[0] > self.max_classes:
            raise InputError(
                f"{text.shape[0]} classes exceed this engine's profile (at most {self.max_classes}); rebuild with "
                f"`python export/build_engine.py --classes 1,OPT,{text.shape[0]}`"
            )
        if self.synonyms == "mean":
            if text.ndim == 3:
                raise InputError(
                    f"this {self.manifest.get('model')} artefact averages synonyms (text.synonyms: mean) and takes "
                    f"(K, D) text embeddings; got {text.shape} (encode the vocabulary for this artefact)"
                )
            return text
        text = text if text.ndim == 3 else text[:, None]
        most = self._profile_max("synonyms")
        if most is not None and text.shape[1] > most:
            raise InputError(
                f"{text.shape[1]} synonyms per class exceed this engine's profile (at most {most}); rebuild with "
                f"`python export/build_engine.py --synonyms 1,OPT,{text.shape[1]}`"
            )
        return text

    # Whether run() takes images of any height and width that are multiples of 32, not only S x S: the
    # PyTorch backend of a config with resize.pad "divisible" (FC-CLIP's padding, fisa_rt.config.ResizeConfig).
    # Exported graphs have a fixed canvas: static shapes are what TensorRT optimises.
    variable_canvas = False

    # Whether run() applies ``seen`` (FC-CLIP's alpha for classes the generator was trained on); artefacts
    # exported before the graphs took a seen input score every class as unseen.
    applies_seen = False

    def run(self, images: torch.Tensor, text: np.ndarray, seen: Optional[np.ndarray] = None) -> RawOutput:
        """``seen`` (K,) bool, used by backends with ``applies_seen`` (the mask-average head's ensemble)."""
        raise NotImplementedError

    def seen_flags(self, text: np.ndarray, seen: Optional[np.ndarray]) -> np.ndarray:
        """(K,) bool for a graph's ``seen`` input; None: every class unseen."""
        if seen is None:
            return np.zeros(text.shape[0], bool)
        flags = np.asarray(seen, bool)
        if flags.shape != (text.shape[0],):
            raise InputError(f"seen must be ({text.shape[0]},) bool, one flag per class; got {flags.shape}")
        return flags


class TorchBackend(Backend):
    name = "torch"
    applies_seen = True

    def __init__(
        self,
        path: str,
        device: Optional[str] = None,
        cuda_graphs: Optional[bool] = None,
        compile: bool = False,
        graph_seam=None,
        autocast: Optional[torch.dtype] = None,
    ):
        """``cuda_graphs``: replay the forward as CUDA graphs (default: on CUDA; fisa_rt.runtime.cuda_graphs);
        ``compile``: torch.compile the model first (fisa_rt.runtime.compiled); ``graph_seam``: the capture and
        replay to use instead of CUDA's (tests drive the runner on CPU with it); ``autocast``: run the forward
        under torch.autocast to this dtype (fp16/bf16 on a GPU; the weights stay fp32)."""
        from ..checkpoint import load_model, read_checkpoint_info
        from ..inference import InferenceWrapper
        from .compiled import autocast_forward, compile_forward
        from .cuda_graphs import GraphRunner, TorchGraphs

        self.device = torch_device(device)
        self.inputs = DeviceInputs(self.device)
        info = read_checkpoint_info(path)
        # normal tensors even for a backend made under torch.inference_mode: the position table's cache needs
        # weights that count their in-place changes (backbone.position_embedding)
        with torch.inference_mode(False):
            model, _ = load_model(path)
            self.model = model.float().eval().to(self.device)
            self.wrapper = InferenceWrapper(self.model, semantic=False).to(self.device).eval()
        self.forward = compile_forward(self.wrapper) if compile else self.wrapper
        if autocast is not None:
            self.forward = autocast_forward(self.forward, self.device, autocast)
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs and graph_seam is None and self.device.type != "cuda":
            raise InputError(f"CUDA graphs need a CUDA device; this backend runs on {self.device}")
        seam = graph_seam or (TorchGraphs(self.device) if cuda_graphs else None)
        self.graphs = GraphRunner(self.forward, seam) if seam is not None else None
        cfg = model.cfg
        self.variable_canvas = cfg.resize.pad == "divisible"  # ViT configs cannot have it (VitBackbone)
        self.manifest = {
            "model": cfg.name,
            "config": cfg.to_dict(),
            "image_size": cfg.image_size,
            "embed_dim": model.embed_dim,
            "templates": cfg.text.templates,
            "synonyms": cfg.text.synonyms,
            "training_vocabulary": {"names": info.vocabulary, "is_thing": info.is_thing},
            "num_queries": cfg.mask_generator.num_queries,
            "backend": "torch",
            "input_dtype": "uint8",
        }

    @torch.no_grad()
    def run(self, images: torch.Tensor, text: np.ndarray, seen: Optional[np.ndarray] = None) -> RawOutput:
        checked = self.check_text(text)
        # this backend's GPU is the current one while it runs: Triton launches on the current device's stream,
        # and CUDA graphs capture there (a model on cuda:1 while cuda:0 is current would otherwise mix the two)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext(), \
                own_precision(self.device):
            flags = None
            if seen is not None:
                seen = self.seen_flags(checked, seen)
                flags = self.inputs("seen", seen, seen)
            images, text = images.to(self.device, non_blocking=True), self.inputs("text", text, checked)
            if self.graphs is not None:
                return RawOutput(*self.graphs(images, text, flags))
            return RawOutput(*self.forward(images, text, flags))

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad(), own_precision(self.device):
            return self.model.text(torch.from_numpy(tokens).to(self.device)).float().cpu().numpy()


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "ONNX Runtime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
        ) from None
    return onnxruntime


def onnx_providers(ort, device: Optional[str] = None, engine_cache: Optional[str] = None) -> List[Any]:
    """TensorRT EP first where present (it builds engines of its own), then CUDA, then CPU; ``device`` "cpu"
    keeps to the CPU, "cuda[:N]" insists on a GPU provider (on GPU N). ``engine_cache``: a folder for the
    TensorRT EP's engines and timing cache, which it otherwise builds again at every session start (minutes);
    one folder per model file, since the EP's cache names do not change with the weights."""
    available = ort.get_available_providers()
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in order if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = re.fullmatch(r"cuda(?::(\d+))?", device or "cuda")
    if gpu is None:
        raise InputError(f"device {device!r}: ONNX Runtime runs on cpu, cuda or cuda:N")
    if device is not None and chosen == ["CPUExecutionProvider"]:
        raise InputError(
            f"device {device!r}: this ONNX Runtime ({ort.__version__}) has no GPU execution provider "
            f"(it has {', '.join(available)}); pip install onnxruntime-gpu"
        )
    options = {} if device is None else {"device_id": gpu.group(1) or "0"}
    cached = {}
    if engine_cache and "TensorrtExecutionProvider" in chosen:
        try:
            os.makedirs(engine_cache, exist_ok=True)
            cached = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": engine_cache,
                      "trt_timing_cache_enable": "True", "trt_timing_cache_path": engine_cache}
        except OSError:  # a cache is never the reason a run fails: the EP then builds at each start
            pass
    given = {"TensorrtExecutionProvider": {**options, **cached}, "CUDAExecutionProvider": options}
    return [(p, given[p]) if given.get(p) else p for p in chosen]


def _check_sizes(path: str, model, manifest: Dict) -> None:
    """The manifest's image_size, embed_dim and input_dtype, which the runtime pads images, checks embeddings and
    feeds images to, against the graph's own: an edited manifest otherwise failed inside ONNX Runtime, at the
    first image."""
    import onnx

    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    # the runtime feeds the image in the manifest's type: another one failed at the first image, in ONNX Runtime
    image_type = next(i.type.tensor_type.elem_type for i in model.graph.input if i.name == "image")
    types = {"uint8": onnx.TensorProto.UINT8, "float32": onnx.TensorProto.FLOAT}
    if "input_dtype" in manifest and types.get(manifest["input_dtype"]) != image_type:
        raise CheckpointError(f"manifest of {path} says input_dtype {manifest['input_dtype']}, its graph takes "
                              f"{onnx.TensorProto.DataType.Name(image_type).lower()}; rebuild both with "
                              "`python export/build_engine.py`")
    for field, sizes in (("image_size", dims["image"][2:4]), ("embed_dim", dims["text"][-1:])):
        found = {d for d in sizes if d > 0}  # 0: a dynamic axis
        if found and found != {manifest[field]}:
            raise CheckpointError(f"manifest of {path} says {field} {manifest[field]}, its graph {found.pop()}; "
                                  "rebuild both with `python export/build_engine.py`")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str, providers: Optional[List[Any]] = None, threads: Optional[int] = None,
                 spinning: bool = False, split_graph: bool = True, options=None, device: Optional[str] = None):
        """``device``: cpu, cuda or cuda:N (default: the first of ``onnx_providers``); ``split_graph``: run the
        vocabulary-only part of the graph once per vocabulary (``vocabulary_graph``); ``options``: ONNX Runtime
        SessionOptions instead of fisa-rt's (``threads`` and ``spinning``)."""
        import onnx

        from fisa_rt.export.manifest import read_checked_manifest
        from fisa_rt.export.qdq_rounding import truncation_note

        from .cache_dirs import cache_dir
        from .threads import onnxruntime_options, resolve_threads

        ort = _onnxruntime()
        if not os.path.isfile(path):
            raise InputError(f"engine {path} does not exist")
        self.manifest = read_checked_manifest(path)
        if self.manifest.get("kind") != "image-model":
            raise InputError(f"{path} is a {self.manifest.get('kind')}, not an image model")
        if self.manifest.get("flavour") == "fused":
            raise InputError(
                f"{path} is the fused ONNX (custom fisa_rt ops for TensorRT plugins); "
                "run the portable one in ONNX Runtime"
            )
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends for corrupt files
            if out_of_memory(exc):  # a sound file on a machine short of memory: the CLI says that instead
                raise
            raise CheckpointError(f"ONNX Runtime cannot load {path}: {exc}") from None
        inputs = sorted(i.name for i in model.graph.input)
        if inputs not in (["image", "text"], ["image", "seen", "text"]):
            raise CheckpointError(
                f"{path} takes inputs {inputs}, not a fisa-rt image model's image, text (and seen): "
                "not the file its manifest describes"
            )
        self.applies_seen = "seen" in inputs
        _check_sizes(path, model, self.manifest)
        note = truncation_note(model)
        if note:
            warn(f"{path}: {note}")
        self.threads = resolve_threads(threads)  # the text encoder's session takes as many
        options = options or onnxruntime_options(ort, self.threads, spinning)
        engines = os.path.join(cache_dir("onnxruntime-tensorrt"), str(self.manifest.get("sha256", ""))[:16])
        providers = providers or onnx_providers(ort, device, engines)
        handed = [model] if split_graph else []
        del model
        self.path, self.split_graph = path, split_graph
        self.sessions = _SessionMaker(path, options, providers, gpu_required=device is not None and device != "cpu")
        try:
            self.session, self.vocabulary = _sessions(path, handed, self.sessions)
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            if out_of_memory(exc):
                raise
            raise CheckpointError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self.outputs = [o.name for o in self.session.get_outputs()][:2]

    @property
    def device(self) -> torch.device:
        """Where the outputs go: the GPU while a GPU provider runs the model (a fallback may move it to the CPU)."""
        on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider" and torch.cuda.is_available()
        return torch.device("cuda" if on_gpu else "cpu")

    def run(self, images: torch.Tensor, text: np.ndarray, seen: Optional[np.ndarray] = None) -> RawOutput:
        text = self.check_text(text)
        feed = {"image": images.cpu().numpy(), "text": np.ascontiguousarray(text, dtype=np.float32)}
        if self.manifest.get("input_dtype") == "float32":
            feed["image"] = feed["image"].astype(np.float32)
        if self.applies_seen:
            feed["seen"] = self.seen_flags(text, seen)
        try:
            mask_logits, scores = self._run(feed)
        except Exception as exc:
            if not self._fell_back(exc):
                raise
            mask_logits, scores = self._run(feed)
        device = self.device
        return RawOutput(torch.from_numpy(mask_logits).to(device), torch.from_numpy(scores).to(device))

    def _run(self, feed: Dict[str, np.ndarray]):
        if self.vocabulary is not None:
            feed = self.vocabulary.image_feed(feed)
        return self.session.run(self.outputs, feed, self.sessions.run_options)

    def _fell_back(self, exc: BaseException) -> bool:
        """Whether the sessions were made again on the providers after one that failed at a run (ONNX Runtime's
        EPFail: the TensorRT EP builds a dynamic graph's engine at its first run), as ONNX Runtime's own fallback
        did. Made from the model's file, not moved with ``set_providers``: that loads the image graph again from
        the temporary file it was made from, gone by then. A remake that fails raises the first provider's error
        (or its own where short of memory), and the backend keeps its sessions."""
        from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

        if not isinstance(exc, EPFail) or out_of_memory(exc) or self.sessions.rest() is None:
            return False
        import onnx

        before = self.sessions.providers
        self.sessions.providers = self.sessions.rest()  # the remake may fall back further, and says so
        try:
            handed = [onnx.load(self.path, load_external_data=False)] if self.split_graph else []
            self.session, self.vocabulary = _sessions(self.path, handed, self.sessions)
        except Exception as retry:
            self.sessions.providers = before
            if out_of_memory(retry):
                raise retry from None
            raise exc from None
        self.sessions.say_fell_back(_provider_name(before[0]), exc)
        return True


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class _SessionMaker:
    """Makes a backend's ONNX Runtime sessions on ``providers``, with ONNX Runtime's own fallback off
    (``onnxruntime_session``: it printed four lines to standard output, and retried the CPU provider where that was
    what failed) and one of fisa-rt's in its place: where a session fails to be made on a GPU provider, the
    providers after it make it and the backend's later sessions, said in one warning line; never the CPU alone
    where a GPU was asked for (``gpu_required``). Any other failure, and one short of memory, is raised as it is.
    A failure at a run: ``OnnxRuntimeBackend._fell_back``."""

    def __init__(self, path: str, options, providers: List[Any], gpu_required: bool = False):
        import onnxruntime

        self.path, self.options, self.providers, self.gpu_required = path, options, providers, gpu_required
        # A run's errors only as exceptions: ONNX Runtime's logger printed each on its own line first ("[E:onnxruntime
        # ... ExecuteKernel] ... Failed to allocate memory"), before fisa-rt's one line; its message is the
        # exception's, which --debug shows whole. Its warnings when a session is made stay.
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4  # fatal only

    def __call__(self, source):
        try:
            return inference_session(source, self.options, self.providers)
        except Exception as exc:
            rest = self.rest()
            if out_of_memory(exc) or rest is None:
                raise
            try:
                session = inference_session(source, self.options, rest)
            except Exception as retry:  # noqa: BLE001 -- the first provider's error is the one to show
                if out_of_memory(retry):
                    raise retry from None
                raise exc from None
            failed, self.providers = _provider_name(self.providers[0]), rest
            self.say_fell_back(failed, exc)
            return session

    def rest(self) -> Optional[List[Any]]:
        """The providers after the first, where falling back to them may help: the first a GPU provider, and the
        rest with a GPU provider still where one is required; else None."""
        if _provider_name(self.providers[0]) not in GPU_PROVIDERS:
            return None
        rest = self.providers[1:]
        if self.gpu_required and not any(_provider_name(p) in GPU_PROVIDERS for p in rest):
            return None
        return rest

    def say_fell_back(self, failed: str, exc: BaseException) -> None:
        """One line: provider ``failed`` failed with ``exc``, and the sessions run on ``providers`` now."""
        warn(f"{self.path}: ONNX Runtime's {failed} failed ({first_line(exc)[:300]}); running on "
             f"{', '.join(_provider_name(p) for p in self.providers)}")


def _provider_name(provider) -> str:
    """A provider's name, from ``onnx_providers``' mix of names and (name, options) pairs."""
    return provider if isinstance(provider, str) else provider[0]


def _sessions(path: str, handed: List[Any], make: _SessionMaker):
    """The image model's session, and the vocabulary part's (a ``VocabularyCache``) where the model has one to
    split off; else the whole graph's session and None. ``handed``: [the loaded ``path``], emptied here so its
    weights are freed before ONNX Runtime reads its own copy, or [] not to split."""
    import onnx

    from .vocabulary_graph import VocabularyCache, split_vocabulary

    model, split = (handed.pop() if handed else None), None
    # the image graph goes to ONNX Runtime as a file of its own, which cannot point at another file's external
    # weights (models over 2 GB): those run whole
    if model is not None and not any(t.data_location == t.EXTERNAL for t in model.graph.initializer):
        try:
            split = split_vocabulary(model)  # model becomes the image graph
        except ValueError as exc:  # the same results either way: say why it is slower, and run
            warn(f"{path}: every node runs once per image: {exc}")
    # Through a file with its weights beside it, not bytes: ONNX Runtime keeps bytes it is given for the session's
    # lifetime (a second copy of the weights, 450 MB for a ViT-B), and serialising them all at once doubles the
    # load's peak memory; the weights file is written tensor by tensor and mapped, not copied (docs/design.md).
    # The folder goes once the session holds what it needs (on Windows, where mapped files cannot be deleted,
    # it stays in the temporary folder).
    if split is not None:
        try:
            vocabulary = make(split.vocabulary.SerializeToString())
            with tempfile.TemporaryDirectory(prefix="fisa-rt-", ignore_cleanup_errors=True) as folder:
                graph = os.path.join(folder, "image.onnx")
                onnx.save(model, graph, save_as_external_data=True, location="image.weights", size_threshold=1024)
                del model
                return make(graph), VocabularyCache(split, vocabulary, make.run_options)
        except Exception as exc:  # noqa: BLE001 -- no usable temporary folder, or a cut ORT refuses: the graph as
            # it is still runs (and a file ORT cannot load at all fails there, with the caller's one error)
            if out_of_memory(exc):  # the whole graph needs more still
                raise
            warn(f"{path}: every node runs once per image: cannot write or load the split graph ({exc})")
    return make(path), None


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str):
        from fisa_rt.export.manifest import read_checked_manifest
        from fisa_rt.export.tensorrt_builder import import_tensorrt, plugin_registration, runtime_name

        if not os.path.isfile(path):
            raise InputError(f"engine {path} does not exist")
        self.manifest = read_checked_manifest(path)
        try:
            trt = import_tensorrt()
        except MissingDependencyError:  # the builder's hint speaks of ONNX files it wrote; here none were
            raise MissingDependencyError(
                "TensorRT is not installed: pip install tensorrt (RTX GPUs: or tensorrt-rtx) "
                "(Jetson: it comes with JetPack 6/7); or run the model's .onnx with ONNX Runtime"
            ) from None
        from fisa_rt.export.driver import driver_cuda

        check_engine_compatibility(
            self.manifest,
            trt.__version__,
            torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
            path,
            runtime_name(trt),
            driver_cuda(),
        )
        if self.manifest["tensorrt"].get("plugins"):
            plugin_registration(path)()
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        # a version-compatible plan carries the lean runtime, host code that TensorRT refuses unless allowed
        self.runtime.engine_host_code_allowed = bool(self.manifest["tensorrt"].get("version_compatible"))
        self.engine = deserialized_engine(self.runtime, path)
        self.context = execution_context(self.engine, path, self.manifest)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.applies_seen = "seen" in names
        self.trt = trt
        self.device = torch.device("cuda")
        self.inputs = DeviceInputs(self.device)
        self.stream = torch.cuda.Stream()

    def run(self, images: torch.Tensor, text: np.ndarray, seen: Optional[np.ndarray] = None) -> RawOutput:
        most = self._profile_max("batch")
        if most is not None and images.shape[0] > most:  # the engine's profile caps the batch: run it in parts
            parts = [self.run(images[i:i + most], text, seen) for i in range(0, images.shape[0], most)]
            return RawOutput(torch.cat([p.mask_logits for p in parts]), torch.cat([p.class_scores for p in parts]))
        checked = self.check_text(text)
        trt = self.trt
        # each input in the type the engine declares (an engine built with --input-dtype float32 reads 4 bytes a
        # pixel where the Segmenter hands uint8)
        inputs = {
            "image": images.to(self.device, self._dtype("image")).contiguous(),
            "text": self.inputs("text", text, np.ascontiguousarray(checked), self._dtype("text")),
        }
        if self.applies_seen:
            flags = self.seen_flags(checked, seen)
            inputs["seen"] = self.inputs("seen", flags, flags, self._dtype("seen"))
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):  # outside the optimisation profile
                profiles = (self.manifest.get("tensorrt") or {}).get("profiles", {})
                raise InputError(
                    f"this engine takes no {name} of shape {tuple(tensor.shape)} (its profiles: {profiles}); "
                    "rebuild it with `python export/build_engine.py` and wider --batch/--classes/--synonyms"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            # shapes as the engine resolves them for these input shapes (B and K are dynamic)
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtype(name), device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        # the inputs (and the outputs' memory) come from the current stream; TensorRT's runs without waiting
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineFailure("TensorRT failed to execute the engine (its log above says why)")
        self.stream.synchronize()
        return RawOutput(outputs["mask_logits"], outputs["class_scores"])

    def _dtype(self, name: str) -> torch.dtype:
        """The torch type of the engine's tensor ``name``."""
        trt = self.trt
        types = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                 trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.uint8: torch.uint8,
                 trt.bool: torch.bool}
        declared = self.engine.get_tensor_dtype(name)
        if declared not in types:
            raise CheckpointError(f"this engine's {name} is of type {declared}, which fisa-rt does not feed or read; "
                                  "rebuild it with `python export/build_engine.py`")
        return types[declared]


def deserialized_engine(runtime, path: str):
    """``path``'s engine. TensorRT returns none for a plan it cannot read (the manifest's version checks passed
    before) and where the GPU cannot hold the engine's weights, told apart here by the free memory."""
    with open(path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        size, free = os.path.getsize(path), torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
        if free is not None and free < size:
            raise OutOfMemory(f"TensorRT cannot load {path} ({byte_size(size)}) into the {byte_size(free)} of GPU "
                              "memory that are free; free GPU memory")
        raise CheckpointError(f"TensorRT cannot deserialize {path}; rebuild it with `python export/build_engine.py`")
    return engine


def execution_context(engine, path: str, manifest: Dict[str, Any]):
    """``engine``'s execution context. TensorRT returns none where it cannot allocate the context's scratch memory
    (its logger says why), sized for the largest shapes the engine's profiles allow."""
    context = engine.create_execution_context()
    if context is None:
        free = f", {byte_size(torch.cuda.mem_get_info()[0])} are free" if torch.cuda.is_available() else ""
        profiles = (manifest.get("tensorrt") or {}).get("profiles", {})
        raise OutOfMemory(
            f"TensorRT could not create an execution context for {path}: it needs "
            f"{byte_size(engine.device_memory_size_v2)} of GPU memory for the largest shapes of its profiles "
            f"({profiles}){free}; free GPU memory, or rebuild it with smaller --batch/--classes maxima "
            "(python export/build_engine.py)"
        )
    return context


def _version(text: str) -> Tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def check_engine_compatibility(manifest: Dict[str, Any], trt_version: str, capability, path: str,
                               runtime: str = "TensorRT", driver: Optional[str] = None) -> None:
    """A serialized engine runs only on the runtime (TensorRT or TensorRT-RTX), version and GPU it was built
    for (unless built version-compatible; TensorRT-RTX engines run on every RTX GPU), and a fused one only
    where the NVIDIA driver (``driver``: its CUDA release) reads its plugins' PTX: refuse early, in one line
    naming both sides, with the command that fixes it."""
    from fisa_rt.kernels.targets import RENAMED, arch_of, describe

    built = manifest.get("tensorrt") or {}
    built_runtime = built.get("runtime", "TensorRT")
    rebuild = (
        "rebuild it here with `python export/build_engine.py --checkpoint <checkpoint> "
        f"--precision {built.get('precision', 'fp16')}`"
    )
    # a version-compatible engine runs on its runtime's version and later ones, never on an earlier one
    newer = _version(trt_version) >= _version(str(built.get("version")))
    version_ok = built.get("version") == trt_version or (built.get("version_compatible") and built_runtime == runtime
                                                         and newer)
    if not version_ok:
        raise CheckpointError(
            f"{path} was built with {built_runtime} {built.get('version')}, this is {runtime} {trt_version}: {rebuild}"
        )
    wanted = built.get("compute_capability")
    if capability is None:
        raise MissingDependencyError(f"{path} is a TensorRT engine and needs an NVIDIA GPU; none is visible")
    if built_runtime == "TensorRT-RTX":  # compiled for the GPU when it loads (JIT)
        return
    if wanted is not None and list(wanted) != list(capability):
        renamed = RENAMED.get(arch_of(wanted)) == arch_of(capability)
        why = " (the same Jetson Thor GPU, renamed sm_101 -> sm_110 by CUDA 13)" if renamed else ""
        raise CheckpointError(
            f"{path} was built for {describe(wanted)}, this GPU is {describe(capability)}{why}: {rebuild}"
        )
    # a fused engine's; manifests written before sm_80-90 were pinned hold none for those, and are not checked
    isa = (built.get("plugin_ptx") or {}).get("ptx_isa")
    if isa:
        from fisa_rt.export.driver import check_driver_reads

        check_driver_reads(round(isa * 10), path, driver)


def resolve_artefact(path: str, backend: Optional[str] = None) -> str:
    """A folder written by ``build_engine.py`` -> its best artefact for this machine: a TensorRT engine
    when TensorRT is importable, else the ONNX Runtime-optimised model, else the portable ONNX; with
    ``backend``, the best that backend runs. Two of the best kind (the builds of two models, or engines of two
    precisions) are refused, naming them: which one ran was decided by their names' order, and not shown."""
    _check_backend(backend)
    if not os.path.isdir(path):
        return path
    files = sorted(os.listdir(path))
    ranked = {
        "tensorrt": [[f for f in files if f.endswith((".engine", ".plan"))]],
        "onnxruntime": [[f for f in files if f.endswith(".portable.ort.onnx")],
                        [f for f in files if f.endswith(".portable.onnx")]],
    }
    if backend is None:
        from fisa_rt.export.tensorrt_builder import import_tensorrt

        try:
            import_tensorrt()  # TensorRT or TensorRT-RTX
            order = ranked["tensorrt"] + ranked["onnxruntime"]
        except MissingDependencyError:
            order = ranked["onnxruntime"]
    else:
        order = ranked.get(backend, [])
    for candidates in order:
        if len(candidates) > 1:
            raise InputError(
                f"folder {path} holds {len(candidates)} artefacts of the kind this machine runs best "
                f"({', '.join(candidates)}): pass the one to run, e.g. --engine {os.path.join(path, candidates[0])}"
            )
        if candidates:
            return os.path.join(path, candidates[0])
    if backend is not None:
        raise InputError(f"folder {path} holds nothing the {backend} backend runs ({_suffixes_of(backend)})")
    raise InputError(
        f"folder {path} holds no engine or portable ONNX; build one with `python export/build_engine.py --out {path}`"
    )


def open_backend(
    path: str,
    backend: Optional[str] = None,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    cuda_graphs: Optional[bool] = None,
    compile: bool = False,
) -> Backend:
    """``threads``: ONNX Runtime's intra-op threads (default: the available cores; fisa_rt.runtime.threads).
    ``cuda_graphs`` (default: on CUDA) and ``compile`` are the PyTorch backend's; the others launch their own
    way (TensorRT, ONNX Runtime), so either asked of them is an error, not ignored."""
    # a string such as "no" is true: it would turn on what it was meant to turn off
    if not (cuda_graphs is None or isinstance(cuda_graphs, bool)):
        raise InputError(f"cuda_graphs must be True or False (or None: on CUDA); got {cuda_graphs!r:.40}")
    if not isinstance(compile, bool):
        raise InputError(f"compile must be True or False; got {compile!r:.40}")
    if not os.path.isfile(path):
        raise missing_file_error(path, "engine")
    kind = backend_for(path, backend)
    if kind == "torch":
        return TorchBackend(path, device, cuda_graphs, compile)
    for asked, flag in ((compile, "compile=True (--compile)"), (cuda_graphs, "cuda_graphs=True (--cuda-graphs)")):
        if asked:
            raise InputError(f"{flag} applies to the PyTorch backend (.safetensors); {path} runs in {kind}")
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, threads=threads, device=device)
    if device is not None:
        chosen = torch_device(device)
        if chosen.type != "cuda" or chosen.index not in (None, torch.cuda.current_device()):
            raise InputError(f"device {device!r}: a TensorRT engine runs on the current CUDA device "
                             "(choose it with CUDA_VISIBLE_DEVICES)")
    return TensorRTBackend(path)
