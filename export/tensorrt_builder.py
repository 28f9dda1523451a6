"""ONNX -> TensorRT engine through TensorRT's Python API (>= 10.3), kept apart so nothing else imports
TensorRT. Without TensorRT, ``build_engine`` raises one MissingDependencyError that says what to install;
``trtexec_command`` prints the equivalent command for a machine that has TensorRT but not this package.

Precision: the network is always strongly typed, so the ONNX's types are the engine's types and one
recipe serves TensorRT 10.3 (JetPack 6) to 11.x. TensorRT 11 removed every weak-typing API (the FP16,
INT8, BF16 and FP8 builder flags, OBEY_PRECISION_CONSTRAINTS, the int8 calibrator; docs/design.md,
"TensorRT 10.3 - 11.x"). fp16 builds the fp16 ONNX that ``mixed_precision.convert_fp16`` writes with
ModelOpt AutoCast (LayerNorm, Softmax and the normalisation reductions stay fp32 in the graph itself);
int8/fp8 build a ModelOpt-quantised ONNX (explicit Q/DQ; ``quantization.quantize_onnx``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple, Union

from fisa_rt.atomic import atomic_path
from fisa_rt.errors import InputError, MissingDependencyError, warn

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
PLUGIN_MIN_VERSION = (10, 9)  # tensorrt.plugin AOT implementations

INSTALL_HINT = (
    "TensorRT is not installed. Desktop GPU: pip install tensorrt (TensorRT 11), or pip install 'tensorrt-cu12<11' "
    "(10.x; >= 10.9 for the fused Triton plugins); RTX GPUs: or pip install tensorrt-rtx, portable only; fp16 also "
    "needs ModelOpt, fisa-rt's [tensorrt] extra (pip install -e '.[tensorrt]' in its folder; docs/deploy.md). "
    "Jetson: TensorRT comes with JetPack 6/7 (sudo apt install nvidia-jetpack; python3 -c 'import tensorrt'). "
    "The ONNX files were written; build on the target with the trtexec command printed above (the portable "
    "flavour; the fused one with build_engine.py there), or run them with ONNX Runtime."
)


@dataclass
class Profile:
    """min / opt / max of one dynamic dimension."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"profile must satisfy 1 <= min <= opt <= max; got {self.min}/{self.opt}/{self.max}")


@dataclass
class EngineOptions:
    precision: str = "fp16"
    batch: Profile = field(default_factory=lambda: Profile(1, 1, 8))
    classes: Profile = field(default_factory=lambda: Profile(1, 150, 1203))
    # synonym rows per class, for text.synonyms: max models (COCO panoptic's "person" has 17)
    synonyms: Profile = field(default_factory=lambda: Profile(1, 17, 32))
    workspace_gib: float = 4.0
    timing_cache: Optional[str] = None
    version_compatible: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")


def import_tensorrt():
    """TensorRT's Python module, or TensorRT for RTX's where only that is installed (same API for what the
    portable build uses: strongly typed networks, ONNX parser, profiles, timing cache; docs/design.md)."""
    try:
        import tensorrt
    except ImportError:
        try:
            import tensorrt_rtx as tensorrt
        except ImportError:
            raise MissingDependencyError(INSTALL_HINT) from None
    return tensorrt


def runtime_name(trt) -> str:
    """ "TensorRT" or "TensorRT-RTX": the two runtimes' engines and versions are not interchangeable."""
    return "TensorRT-RTX" if trt.__name__.startswith("tensorrt_rtx") else "TensorRT"


def tensorrt_version(trt) -> Tuple[int, ...]:
    return tuple(int(p) for p in trt.__version__.split(".")[:3] if p.isdigit())


Inputs = Dict[str, Tuple[Union[int, str], ...]]  # onnx_export.graph_inputs: name -> dims, a str a profile's name


def input_shapes(inputs: Inputs, options: EngineOptions) -> Dict[str, Tuple[tuple, tuple, tuple]]:
    """Optimization-profile (min, opt, max) shapes of the image model's inputs."""
    profiles = {"batch": options.batch, "classes": options.classes, "synonyms": options.synonyms}

    def shape(dims, which):
        return tuple(getattr(profiles[d], which) if isinstance(d, str) else d for d in dims)

    return {name: tuple(shape(dims, w) for w in ("min", "opt", "max")) for name, dims in inputs.items()}


def used_profiles(inputs: Inputs, options: EngineOptions) -> Dict[str, Dict[str, int]]:
    """The manifest's record of the profiles these inputs use."""
    names = {d for dims in inputs.values() for d in dims if isinstance(d, str)}
    return {n: asdict(getattr(options, n)) for n in ("batch", "classes", "synonyms") if n in names}


def trtexec_command(onnx_path: str, engine_path: str, inputs: Inputs, options: EngineOptions, plugins: bool) -> str:
    shapes = input_shapes(inputs, options)

    def spec(i):
        return ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())

    parts = [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
        f"--minShapes={spec(0)}", f"--optShapes={spec(1)}", f"--maxShapes={spec(2)}",
        f"--memPoolSize=workspace:{int(options.workspace_gib * 1024)}M",
    ]
    parts.append("--stronglyTyped")  # the ONNX's types decide: fp16 ONNX from AutoCast, Q/DQ for int8/fp8
    if options.timing_cache:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    if options.version_compatible:
        parts.append("--versionCompatible")
    if plugins:
        parts.append(
            "# the fused ONNX needs the fisa_rt plugins: build it from Python (export/build_engine.py), "
            "trtexec cannot register tensorrt.plugin plugins"
        )
    return " ".join(parts)


def network_flags(trt, fused: bool) -> int:
    """Strongly typed always. The fused graph's plugins have an AOT (PTX in the engine) and a JIT
    (Python + torch) implementation; tensorrt.plugin refuses to choose between the two unless the
    network states a preference (tensorrt/plugin/_lib.py, _TemplatePluginCreator.create_plugin), and the
    AOT one is what runs without Python on the device."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if fused:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    return flags


def plugin_registration(what: str):
    """``register_plugins`` of fisa-rt's TensorRT plugins, whose kernels are Triton's, for ``what`` needs them;
    one line where Triton is missing (Jetson's torch wheels may come without it)."""
    try:
        from .plugins import register_plugins
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} uses fisa-rt's fused TensorRT plugins, which need {exc.name or 'triton'}: pip install triton "
            "(or build the portable flavour: --flavour portable)"
        ) from None
    return register_plugins


def use_timing_cache(config, path: Optional[str]) -> None:
    """Start the build from ``path``'s timing cache. The folder's cache is shared by every build into it, so it
    may come from another GPU or TensorRT, or be damaged: TensorRT then refuses it, and the build starts an
    empty one instead (which it then saves)."""
    data = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if data:
        warn(f"{path} is a timing cache of another GPU or TensorRT, or damaged: starting a new one")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def save_timing_cache(config, path: Optional[str]) -> None:
    """Write the build's timing cache to ``path`` whole or not at all (a cut-off file would be refused by every
    later build); TensorRT-RTX keeps none (its timing-cache calls do nothing)."""
    cache = config.get_timing_cache()
    if path and cache is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(cache.serialize())


def build_engine(onnx_path: str, engine_path: str, inputs: Inputs, options: EngineOptions, fused: bool) -> Dict:
    """Build and write the engine; returns the TensorRT part of its manifest."""
    import torch

    trt = import_tensorrt()
    version = tensorrt_version(trt)
    rtx = runtime_name(trt) == "TensorRT-RTX"
    # TensorRT-RTX builds on the CPU (ahead of time) for every RTX GPU; TensorRT builds for the GPU it runs on
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() and not rtx else None
    plugin_records, ptx = [], None
    if fused and rtx:
        raise MissingDependencyError(
            f"the fused ONNX needs tensorrt.plugin, which TensorRT-RTX {trt.__version__} does not ship: build the "
            "portable ONNX instead (--flavour portable), or install TensorRT >= 10.9"
        )
    if fused:
        if version < PLUGIN_MIN_VERSION:
            raise MissingDependencyError(
                f"the fused ONNX needs TensorRT >= {'.'.join(map(str, PLUGIN_MIN_VERSION))} "
                "(tensorrt.plugin AOT plugins); "
                f"this is {trt.__version__}: build the portable ONNX instead (--flavour portable)"
            )
        from .driver import driver_cuda

        register_plugins = plugin_registration(f"the fused build of {onnx_path}")
        from .plugins import plugin_arch, ptx_record

        if capability is None:
            raise MissingDependencyError("the fused engine embeds PTX for the GPU it is built on; no GPU is visible")
        # refuses a GPU newer than every gated target, or a driver that cannot read the PTX, before the long build
        arch = plugin_arch(capability, driver_cuda())
        plugin_records, ptx = register_plugins(arch), ptx_record(arch)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, fused))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in input_shapes(inputs, options).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    use_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    with atomic_path(engine_path) as tmp, open(tmp, "wb") as f:
        f.write(serialized)
    save_timing_cache(config, options.timing_cache)
    return {
        "tensorrt": {
            "runtime": runtime_name(trt),
            "version": trt.__version__,
            "cuda": torch.version.cuda,
            "compute_capability": list(capability) if capability else None,
            "precision": options.precision,
            "strongly_typed": True,
            "profiles": used_profiles(inputs, options),
            "version_compatible": options.version_compatible,
            "plugins": plugin_records,
            "plugin_ptx": ptx,
        }
    }

