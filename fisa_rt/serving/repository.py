"""``fisa-rt export-triton``: a Triton model repository for an artefact, each ``config.pbtxt`` built as Triton's own
``ModelConfig`` message (``tritonclient``'s ``model_config_pb2``), so what is written parses by construction,
and checked again after writing (``check_repository``), before it replaces anything in the repository.

``fisa_python`` runs fisa-rt's ``Segmenter`` on any artefact in the Python backend, which is all the
``nvidia-pytriton`` wheel's server has. The production flavour (``production_models``) is written beside it.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..errors import InputError, MissingDependencyError
from . import protocol

PYTHON_MODEL = "fisa_python"
# a model's name -> what writes it into the (new) folder it is given; all are built before any is written
Models = Dict[str, Callable[[str], None]]


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError:
        raise MissingDependencyError("Triton's model-config schema comes with tritonclient: "
                                     "pip install 'tritonclient[http,grpc]' (or pip install -e '.[serve]')") from None
    return pb


def text_format():
    from google.protobuf import text_format as tf

    return tf


@dataclass
class PythonModelOptions:
    """How ``fisa_python`` runs: ``instances`` x ``threads`` <= the cores by default (fisa_rt.runtime.threads)."""

    instances: int = 1
    threads: Optional[int] = None  # per instance; default: available cores // instances
    max_batch_size: int = 8
    queue_delay_us: int = 2000  # how long the dynamic batcher waits to fill a batch
    device: str = "cpu"
    kind: str = "KIND_CPU"
    max_pixels: int = 100_000_000
    max_classes: int = 2048
    site_dirs: Optional[List[str]] = None  # default: this environment's (where fisa-rt and torch are installed)
    prepend_dirs: Optional[List[str]] = None  # ahead of everything: a numpy<2 folder for numpy-1 stubs


def default_site_dirs() -> List[str]:
    """This environment's site directories, in import order, and the folder fisa_rt itself is imported from
    (an editable install's source tree, which a .pth file would name and the stub skips)."""
    import fisa_rt

    dirs = [p for p in __import__("sys").path if p.endswith("site-packages") and os.path.isdir(p)]
    dirs += [p for p in site.getsitepackages() if p not in dirs]
    source = os.path.dirname(os.path.dirname(os.path.abspath(fisa_rt.__file__)))
    return dirs + ([source] if source not in dirs else [])


def artefact_files(artefact: str) -> List[str]:
    """The files ``artefact`` needs beside it: its manifest, and for exported graphs the text encoder it names
    (with its manifest) and the tokenizer's vocabulary."""
    from ..export.manifest import manifest_path, read_manifest
    from ..vocab.tokenizer import VOCAB_FILE

    files = [artefact]
    if artefact.endswith(".safetensors"):
        return files
    folder = os.path.dirname(os.path.abspath(artefact))
    manifest = read_manifest(artefact)
    files.append(manifest_path(artefact))
    text = (manifest.get("text_encoder") or {}).get("file")
    if text:
        files += [os.path.join(folder, text), manifest_path(os.path.join(folder, text))]
    if os.path.isfile(os.path.join(folder, VOCAB_FILE)):
        files.append(os.path.join(folder, VOCAB_FILE))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise InputError(f"{artefact} needs {missing[0]} beside it; rebuild with `python export/build_engine.py`")
    return files


def _parameters(config, values: Dict[str, object]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def _tensor(field, name: str, data_type: str, dims, ragged: bool = False, optional: bool = False) -> None:
    pb = model_config_pb2()
    entry = field.add()
    entry.name, entry.data_type = name, pb.DataType.Value(data_type)
    entry.dims.extend(int(d) for d in dims)
    if ragged:
        entry.allow_ragged_batch = True
    if optional:
        entry.optional = True


def python_model_config(artefact_name: str, backend: Optional[str], options: PythonModelOptions):
    """The ``fisa_python`` ModelConfig: uint8 HWC images and BYTES class names of any size, batched by Triton's
    dynamic batcher (ragged: requests of different image and vocabulary sizes share an execution)."""
    from ..runtime.threads import available_cores

    pb = model_config_pb2()
    config = pb.ModelConfig(name=PYTHON_MODEL, backend="python", max_batch_size=options.max_batch_size)
    _tensor(config.input, protocol.IMAGE, "TYPE_UINT8", (-1, -1, 3), ragged=True)
    _tensor(config.input, protocol.CLASSES, "TYPE_STRING", (-1,), ragged=True)
    _tensor(config.output, protocol.SEMANTIC, "TYPE_INT32", (-1, -1))
    _tensor(config.output, protocol.SEGMENT_MAP, "TYPE_INT32", (-1, -1))
    _tensor(config.output, protocol.RESULT, "TYPE_STRING", (1,))
    config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    group = config.instance_group.add()
    group.kind, group.count = pb.ModelInstanceGroup.Kind.Value(options.kind), options.instances
    threads = options.threads or max(1, available_cores() // options.instances)
    _parameters(config, {
        "artefact": artefact_name, "backend": backend or "", "device": options.device, "threads": threads,
        "max_pixels": options.max_pixels, "max_classes": options.max_classes,
    })
    return config


def write_config(folder: str, config) -> str:
    from ..atomic import atomic_path

    path = os.path.join(folder, "config.pbtxt")
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text_format().MessageToString(config))
    return path


def read_config(path: str):
    """``path`` parsed with Triton's schema, or one InputError naming the file and the problem."""
    pb = model_config_pb2()
    try:
        with open(path) as f:
            return text_format().Parse(f.read(), pb.ModelConfig())
    except (OSError, text_format().ParseError) as exc:
        raise InputError(f"{path} is not a Triton model config: {exc}") from None


def _python_folder(folder: str, files: List[str], options: PythonModelOptions, config) -> None:
    """``folder``: config.pbtxt, 1/model.py (fisa_rt/serving/triton_model.py), 1/environment.json and ``files``
    copied into 1/."""
    from ..atomic import write_json

    version = os.path.join(folder, "1")
    os.makedirs(version)
    for path in files:
        shutil.copy2(path, os.path.join(version, os.path.basename(path)))
    # copied, not imported: importing it would set up a stub's sys.path in this process
    shutil.copy2(os.path.join(os.path.dirname(__file__), "triton_model.py"), os.path.join(version, "model.py"))
    site_dirs = default_site_dirs() if options.site_dirs is None else options.site_dirs
    write_json(os.path.join(version, "environment.json"),
               {"site_dirs": site_dirs, "prepend_dirs": list(options.prepend_dirs or [])}, indent=2)
    write_config(folder, config)


def _graph_folder(folder: str, config, source: Optional[str]) -> None:
    """``folder``: config.pbtxt, and ``source`` copied to 1/ under the config's model file name."""
    os.makedirs(os.path.join(folder, "1"))
    if source:
        shutil.copy2(source, os.path.join(folder, "1", config.default_model_filename))
    write_config(folder, config)


def python_model(artefact: str, backend: Optional[str], options: PythonModelOptions) -> Models:
    """``fisa_python``, serving ``artefact`` with its files copied beside model.py."""
    config = python_model_config(os.path.basename(artefact), backend, options)
    return {PYTHON_MODEL: functools.partial(_python_folder, files=artefact_files(artefact), options=options,
                                            config=config)}


def staging_parent(repository: str) -> str:
    """Where the models are written before they replace their folders in ``repository``: its parent folder. Triton
    takes every folder of a repository for a model, hidden ones too, so a staging folder there made a server that
    started or polled meanwhile fail ("failed to load all models", tritonserver 2.51; docs/design.md). A repository
    whose parent is another file system (a mount point) or not writable stages inside itself, the only place a
    rename can then reach."""
    repository = os.path.abspath(repository)
    parent = os.path.dirname(repository)
    try:
        same_device = os.stat(parent).st_dev == os.stat(repository).st_dev
    except OSError:
        return repository
    return parent if same_device and os.access(parent, os.W_OK | os.X_OK) else repository


def write_models(repository: str, artefact: str, models: Models, overwrite: bool = False) -> List[str]:
    """``models`` into ``repository`` (made if missing), written beside it (``staging_parent``) and checked
    (``check_repository``) before any replaces a folder there (fisa_rt.atomic.atomic_folders): an existing model
    only with ``overwrite``, then wholly; on any failure no new file remains. The lines to print."""
    from ..atomic import atomic_folders, output_folder

    with output_folder(repository), atomic_folders(repository, list(models), overwrite,
                                                   staging_parent(repository)) as staging:
        for name, write in models.items():
            write(os.path.join(staging, name))
        lines = check_repository(staging, artefact, shown=repository)
    return [f"wrote {os.path.join(repository, name)}" for name in models] + lines


def write_python_model(repository: str, artefact: str, backend: Optional[str], options: PythonModelOptions,
                       overwrite: bool = False) -> str:
    """``repository/fisa_python`` alone."""
    write_models(repository, artefact, python_model(artefact, backend, options), overwrite)
    return os.path.join(repository, PYTHON_MODEL)

# ---- the production flavour: the engine and the text encoder on Triton's native backends ----------------------

ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16"}


def onnx_signature(path: str) -> Dict[str, Dict[str, tuple]]:
    """{"input"/"output": {name: (Triton data type, dims with -1 for dynamic)}} of an ONNX graph."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def table(values):
        out = {}
        for v in values:
            if v.name in initializers:
                continue
            kind = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
            out[v.name] = (ONNX_TO_TRITON.get(kind.elem_type, f"ONNX type {kind.elem_type}"), dims)
        return out

    return {"input": table(graph.input), "output": table(graph.output)}


def config_signature(config) -> Dict[str, Dict[str, tuple]]:
    pb = model_config_pb2()

    def table(values):
        return {v.name: (pb.DataType.Name(v.data_type), tuple(v.dims)) for v in values}

    return {"input": table(config.input), "output": table(config.output)}


def _profiles(manifest: Dict) -> Dict[str, str]:
    """The vocabulary-size and synonym profiles (min,opt,max) a TensorRT engine was built with; for ONNX, the
    runtime's own limits do not exist, so none."""
    profiles = (manifest.get("tensorrt") or {}).get("profiles") or {}
    return {f"{k}_profile": ",".join(str(profiles[k][x]) for x in ("min", "opt", "max")) for k in sorted(profiles)}


def graph_model_config(name: str, signature: Dict[str, Dict[str, tuple]], engine: bool, manifest: Dict):
    """A native-backend model of an exported graph. ``max_batch_size: 0`` with the batch axis in the dims: the
    graph's text input is one vocabulary for the whole batch, so Triton's dynamic batcher, which concatenates
    every input along axis 0, would merge the vocabularies of different requests (docs/serving.md)."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, max_batch_size=0)
    if engine:
        config.platform, config.default_model_filename = "tensorrt_plan", "model.plan"
    else:
        config.backend, config.default_model_filename = "onnxruntime", "model.onnx"
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = f"/tmp/fisa-trt-cache/{name}"
    for kind, field in (("input", config.input), ("output", config.output)):
        for tensor, (data_type, dims) in signature[kind].items():
            _tensor(field, tensor, data_type, dims)
    group = config.instance_group.add()
    group.kind, group.count = pb.ModelInstanceGroup.Kind.Value("KIND_GPU"), 1
    _parameters(config, {**_profiles(manifest), "synonyms": manifest.get("synonyms", "mean"),
                         "image_size": manifest.get("image_size", ""), "embed_dim": manifest.get("embed_dim", "")})
    return config


def artefact_signature(artefact: str, manifest: Dict) -> Dict[str, Dict[str, tuple]]:
    """What the artefact takes and returns: its ONNX graph, or for an engine the graph it was built from (named
    by its manifest, beside it), checked against the manifest's input table."""
    folder = os.path.dirname(os.path.abspath(artefact))
    if artefact.endswith(".onnx"):
        return onnx_signature(artefact)
    source = os.path.join(folder, (manifest.get("source_onnx") or {}).get("file", ""))
    if not os.path.isfile(source):
        raise InputError(f"{artefact}'s source ONNX ({source}) must be beside it: its inputs and outputs come from it")
    return onnx_signature(source)


def check_against_manifest(signature, manifest: Dict, where: str) -> None:
    """The graph's inputs are the manifest's input table (dynamic axes -1), and the image its image size."""
    expected = {n: tuple(-1 if isinstance(d, str) else int(d) for d in dims)
                for n, dims in (manifest.get("inputs") or {}).items()}
    got = {n: dims for n, (_, dims) in signature["input"].items()}
    if expected and got != expected:
        raise InputError(f"{where}: inputs {got} differ from the manifest's {expected}")


def _stage_config(name: str, stage: str, inputs: Dict[str, tuple], outputs: Dict[str, tuple], artefact: str,
                  options: PythonModelOptions):
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=0)
    for field, table in ((config.input, inputs), (config.output, outputs)):
        for tensor, (data_type, dims) in table.items():
            _tensor(field, tensor, data_type, dims)
    group = config.instance_group.add()
    group.kind, group.count = pb.ModelInstanceGroup.Kind.Value("KIND_CPU"), 1
    _parameters(config, {"stage": stage, "artefact": os.path.basename(artefact), "threads": options.threads or 1,
                         "max_pixels": options.max_pixels, "max_classes": options.max_classes})
    return config


# the ensemble's own tensors: one request = one image ((1, H, W, 3), as fisa_python takes it) and its classes
IMAGE_IN = ("TYPE_UINT8", (1, -1, -1, 3))
CLASSES_IN = ("TYPE_STRING", (1, -1))
RESULT_OUT = {protocol.SEMANTIC: ("TYPE_INT32", (1, -1, -1)), protocol.SEGMENT_MAP: ("TYPE_INT32", (1, -1, -1)),
              protocol.RESULT: ("TYPE_STRING", (1,))}


def ensemble_config(image_sig: Dict, text_sig: Dict):
    """``fisa``: fisa_pre -> fisa_text -> fisa_vocab -> fisa_image -> fisa_post, the host steps in Python
    (fisa_rt.serving.stages), the engine and the text encoder on their native backends."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name="fisa", platform="ensemble", max_batch_size=0)
    _tensor(config.input, protocol.IMAGE, *IMAGE_IN)
    _tensor(config.input, protocol.CLASSES, *CLASSES_IN)
    for name, (data_type, dims) in RESULT_OUT.items():
        _tensor(config.output, name, data_type, dims)
    (tokens,), (embeddings,) = list(text_sig["input"]), list(text_sig["output"])
    seen = "seen" in image_sig["input"]
    steps = [
        ("fisa_pre", {"image": "image", "classes": "classes"},
         {"canvas": "canvas", "content": "content", "tokens": "tokens"}),
        ("fisa_text", {tokens: "tokens"}, {embeddings: "prompt_embeddings"}),
        ("fisa_vocab", {"classes": "classes", "embeddings": "prompt_embeddings"},
         {"text": "text", **({"seen": "seen"} if seen else {})}),
        ("fisa_image", {"image": "canvas", "text": "text", **({"seen": "seen"} if seen else {})},
         {"mask_logits": "mask_logits", "class_scores": "class_scores"}),
        ("fisa_post", {"image": "image", "classes": "classes", "content": "content", "mask_logits": "mask_logits",
                       "class_scores": "class_scores"}, {n: n for n in RESULT_OUT}),
    ]
    for model, inputs, outputs in steps:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(inputs)  # the step's tensor -> the ensemble's
        step.output_map.update(outputs)
    return config


def production_models(artefact: str, options: PythonModelOptions) -> Models:
    """``fisa_image`` (the engine), ``fisa_text`` (the text encoder), the Python steps and the ``fisa`` ensemble
    of an exported artefact (a checkpoint has no production flavour: fisa_python serves it)."""
    from ..export.manifest import read_checked_manifest

    if artefact.endswith(".safetensors"):
        return {}
    manifest = read_checked_manifest(artefact)
    engine = artefact.endswith((".engine", ".plan"))
    signature = artefact_signature(artefact, manifest)
    check_against_manifest(signature, manifest, artefact)
    text = os.path.join(os.path.dirname(os.path.abspath(artefact)), manifest["text_encoder"]["file"])
    text_sig = onnx_signature(text)
    models = {name: functools.partial(_graph_folder, config=graph_model_config(name, sig, is_engine, manifest),
                                      source=source)
              for name, source, sig, is_engine in (("fisa_image", artefact, signature, engine),
                                                   ("fisa_text", text, text_sig, False))}
    # the steps read the manifest and the text encoder's tokenizer, not the engine
    files = [f for f in artefact_files(artefact) if f != artefact]
    (tokens, tokens_type), = ((n, t) for n, t in text_sig["input"].items())
    embeddings_type = next(iter(text_sig["output"].values()))
    image_in, image_out = signature["input"], signature["output"]
    stages = {
        "fisa_pre": ("pre", {"image": IMAGE_IN, "classes": CLASSES_IN},
                     {"canvas": image_in["image"], "content": ("TYPE_INT32", (2,)), "tokens": tokens_type}),
        "fisa_vocab": ("vocab", {"classes": CLASSES_IN, "embeddings": embeddings_type},
                       {n: image_in[n] for n in ("text", "seen") if n in image_in}),
        "fisa_post": ("post", {"image": IMAGE_IN, "classes": CLASSES_IN, "content": ("TYPE_INT32", (2,)),
                               "mask_logits": image_out["mask_logits"], "class_scores": image_out["class_scores"]},
                      RESULT_OUT),
    }
    for name, (stage, inputs, outputs) in stages.items():
        models[name] = functools.partial(_python_folder, files=files, options=options,
                                         config=_stage_config(name, stage, inputs, outputs, artefact, options))
    models["fisa"] = functools.partial(_graph_folder, config=ensemble_config(signature, text_sig), source=None)
    return models


def check_repository(repository: str, artefact: str, shown: Optional[str] = None) -> List[str]:
    """Every config.pbtxt parsed with Triton's schema and compared with what it serves: fisa_image / fisa_text
    with their graphs and the manifest's profiles, fisa_python with the wire format. One InputError per problem;
    the lines it checked otherwise. ``shown``: the folder to name instead (models checked before they move there)."""
    from ..export.manifest import read_manifest

    lines, configs = [], {}
    for name in sorted(os.listdir(repository)):
        written = os.path.join(repository, name, "config.pbtxt")
        if not os.path.isfile(written):
            continue
        config = read_config(written)
        path = os.path.join(shown or repository, name, "config.pbtxt")
        if config.name != name:
            raise InputError(f"{path} names model {config.name!r}, but its folder is {name!r}")
        got = config_signature(config)
        if name == PYTHON_MODEL:
            want = config_signature(python_model_config("", None, PythonModelOptions(site_dirs=[])))
            served = os.path.join(repository, name, "1", config.parameters["artefact"].string_value)
            if not os.path.isfile(served):
                raise InputError(f"{path} serves {served}, which is missing")
        else:
            model_file = os.path.join(repository, name, "1", config.default_model_filename)
            manifest = read_manifest(artefact, required=False) or {}
            if name == "fisa_image":
                want = artefact_signature(artefact, manifest)
                missing = {k: v for k, v in _profiles(manifest).items()
                           if config.parameters[k].string_value != v}
                if missing:
                    raise InputError(f"{path} does not carry the engine's profiles {missing}")
            elif name == "fisa_text":
                want = onnx_signature(model_file)
            else:  # the ensemble and its Python steps: checked by their wiring, below
                want = got
        if got != want:
            raise InputError(f"{path}: inputs/outputs {got} differ from what it serves {want}")
        lines.append(f"{path}: parses with Triton's schema; {len(got['input'])} inputs and {len(got['output'])} "
                     f"outputs match")
        configs[name] = config
    if "fisa" in configs:
        check_ensemble(configs)
        lines.append("fisa: every step's inputs and outputs agree with the tensors the steps before it produce")
    return lines


def _compatible(a: tuple, b: tuple) -> bool:
    """Two (data type, dims) that can be the same tensor: -1 matches any size."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(x == y or -1 in (x, y) for x, y in zip(a[1], b[1]))


def check_ensemble(configs: Dict[str, object]) -> None:
    """Each step of ``fisa`` takes exactly its model's inputs, from tensors of the ensemble or of earlier steps
    with a compatible data type and shape, and every ensemble output is produced."""
    ensemble = configs["fisa"]
    tensors = dict(config_signature(ensemble)["input"])
    for step in ensemble.ensemble_scheduling.step:
        if step.model_name not in configs:
            raise InputError(f"ensemble fisa names {step.model_name}, which the repository lacks")
        signature = config_signature(configs[step.model_name])
        if set(step.input_map) != set(signature["input"]):
            raise InputError(f"ensemble step {step.model_name} maps inputs {sorted(step.input_map)}, but the model "
                             f"takes {sorted(signature['input'])}")
        for model_input, tensor in step.input_map.items():
            if tensor not in tensors:
                raise InputError(f"ensemble step {step.model_name} reads {tensor!r} before any step writes it")
            if not _compatible(tensors[tensor], signature["input"][model_input]):
                raise InputError(f"ensemble step {step.model_name}: {tensor!r} is {tensors[tensor]}, its input "
                                 f"{model_input!r} takes {signature['input'][model_input]}")
        for model_output, tensor in step.output_map.items():
            if model_output not in signature["output"]:
                raise InputError(f"ensemble step {step.model_name} has no output {model_output!r}")
            tensors[tensor] = signature["output"][model_output]
    for name, spec in config_signature(ensemble)["output"].items():
        if name not in tensors or not _compatible(tensors[name], spec):
            raise InputError(f"ensemble fisa's output {name!r} {spec} is not what its steps produce")


def served_artefact(path: str) -> str:
    """A build folder's artefact for a repository: its best one here, except that the portable ONNX stands in for
    the ONNX Runtime-optimised one. A repository is for a server, most often another machine with a GPU, and that
    graph holds ONNX Runtime's CPU fusions (BiasGelu, FusedMatMul: contrib ops TensorRT cannot take), which
    ONNX Runtime says to run only on the hardware and execution provider that made them."""
    from ..runtime.backends import resolve_artefact

    artefact = resolve_artefact(path)
    if os.path.isdir(path) and artefact.endswith(".portable.ort.onnx"):
        portable = artefact[: -len(".ort.onnx")] + ".onnx"
        if os.path.isfile(portable):
            return portable
    return artefact


def export_repository(artefact: str, repository: str, backend: Optional[str], options: PythonModelOptions,
                      overwrite: bool = False) -> List[str]:
    """The repository for ``artefact`` (a build_engine.py folder: ``served_artefact``); the lines to print."""
    from ..runtime.backends import backend_for

    artefact = served_artefact(artefact)
    if not os.path.isfile(artefact):
        raise InputError(f"engine {artefact} does not exist")
    backend_for(artefact, backend)  # a backend that cannot run the file is refused here, as infer refuses it
    models = {**python_model(artefact, backend, options), **production_models(artefact, options)}
    return write_models(repository, artefact, models, overwrite)
