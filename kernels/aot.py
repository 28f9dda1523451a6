"""Ahead-of-time compilation of the Triton kernels to PTX for a given GPU, on any machine.

TensorRT's AOT plugins (``tensorrt.plugin.aot_impl``) embed PTX in the engine, so a Jetson (sm_87, sm_110)
or an H100/B200/RTX 50 engine can be built and validated where no such GPU exists. ``triton.compile`` needs
only the CUDA backend that ships with the triton wheel (LLVM + ptxas), not a GPU; ``targets.py`` says which
ptxas and PTX ISA each compute capability gets.

    python -m fisa_rt.kernels.aot --arch 87 --dtype fp16 --out ptx/   # writes <kernel>.sm_87.fp16.ptx + index.json
    python -m fisa_rt.kernels.aot --out ptx/                          # every target in kernels/targets.py

Must run without ``TRITON_INTERPRET``: the interpreter replaces kernels by Python functions that have
no compiler path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

from . import targets

# kernel name -> (module, function) in fisa_rt.kernels
KERNELS: Dict[str, tuple] = {
    # PyTorch-path kernels (the names are also their keys in tuning.TUNING)
    "adapter_attention_fwd": ("adapter_attention_triton", "adapter_attention_fwd_kernel"),
    "adapter_attention_bwd": ("adapter_attention_triton", "adapter_attention_bwd_kernel"),
    "adapter_attention_bwd_kv": ("adapter_attention_triton", "adapter_attention_bwd_kv_kernel"),
    "mask_attention_sparse_fwd": ("mask_attention_triton", "mask_attention_sparse_fwd_kernel"),
    "mask_attention_combine": ("mask_attention_triton", "mask_attention_combine_kernel"),
    "mask_attention_sparse_bwd": ("mask_attention_triton", "mask_attention_sparse_bwd_kernel"),
    "mask_weights": ("mask_pooling_triton", "mask_weights_kernel"),
    "mask_pool_fwd": ("mask_pooling_triton", "mask_pool_fwd_kernel"),
    "mask_pool_bwd": ("mask_pooling_triton", "mask_pool_bwd_kernel"),
    "cosine_logits": ("mask_pooling_triton", "cosine_logits_kernel"),
    # TensorRT AOT-plugin entry points (export/plugins.py gives their constants)
    "adapter_attention_plugin": ("plugin_kernels_triton", "adapter_attention_plugin_kernel"),
    "mask_attention_plugin": ("plugin_kernels_triton", "mask_attention_plugin_kernel"),
    "mask_pool_plugin": ("plugin_kernels_triton", "mask_pool_plugin_kernel"),
}
# The plugin kernels' int scalars (TensorRT's calling convention puts them between inputs and outputs).
PLUGIN_INTS = {"N", "KN", "B"}
# Every kernel takes its pointers first (upper-case names), then strides and sizes (i32) and float scalars.
# Pointer arguments that are not in the data dtype; the other pointers are data tensors.
FP32_POINTERS = {"LSE", "DELTA", "DK", "DV", "DKI", "DVI", "P", "DENOM", "G", "M", "LP"}
INT8_POINTERS = {"VALID", "INSIDE"}
INT32_POINTERS = {"COUNTS", "INDICES"}
# What Triton's JIT specialises at the shapes the PyTorch path runs (head dim 64, N = 1600 or 16384 tokens,
# HW = 1600 cells, C = 768, contiguous inputs from PyTorch's 16-byte-aligned allocator): pointers aligned,
# innermost strides 1 (compile-time constants), other strides and these sizes multiples of 16. The AOT
# PTX of the PyTorch-path kernels carries the same hints, so the static gate reads the code the GPU runs.
UNIT_STRIDES = {"sqd", "skd", "svd", "ssd", "std", "sod", "s_valid_k", "smx", "sf_hw", "sd_hw", "st_c"}
MULTIPLE_OF_16_SIZES = {"N", "D", "HW", "C"}
FLOAT_SCALARS = {"qk_scale", "sm_scale", "scale_y", "scale_x", "threshold", "scale"}
DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
# Plugin kernels are compiled with every pointer specialised as 16-byte aligned (Triton's "tt.divisibility"
# hint, what its launcher gives a 16-byte-aligned torch tensor). TensorRT's plugin buffers are 256-byte
# aligned; the JIT and ONNX Runtime launchers check it (``check_alignment``).
PLUGIN_POINTER_ALIGNMENT = 16


@dataclass(frozen=True)
class KernelSpec:
    """Everything one PTX is specialised for: the registry that ``compile_spec`` compiles, that the engine
    build and the ptxas gate iterate (``default_spec`` for the PyTorch-path kernels,
    ``plugin_launches.example_launches`` for the plugin kernels)."""

    kernel: str  # a KERNELS key
    arch: int  # compute capability x10
    dtype: str  # data dtype: fp32 / fp16 / bf16
    constants: Tuple[Tuple[str, Any], ...]  # constexpr name -> value, sorted
    num_warps: int
    num_stages: int
    # plugin kernels: pointers hinted PLUGIN_POINTER_ALIGNMENT-aligned, and the number of .entry
    # parameters TensorRT passes (inputs + extra_args + outputs); None for PyTorch-path kernels
    params: Optional[int] = None

    @property
    def aligned_pointers(self) -> bool:
        return self.params is not None

    def constant(self, name: str) -> Any:
        return dict(self.constants)[name]


def make_spec(kernel: str, arch: int, dtype: str, constants: Dict[str, Any],
              params: Optional[int] = None) -> KernelSpec:
    """A spec from a constants dict that may carry "_num_warps"/"_num_stages" (tuning.configs_for's)."""
    constants = dict(constants)
    num_warps = int(constants.pop("_num_warps", 4))
    num_stages = int(constants.pop("_num_stages", 3))
    return KernelSpec(kernel, arch, dtype, tuple(sorted(constants.items())), num_warps, num_stages, params)


def default_spec(kernel: str, arch: int, dtype: str = "fp16") -> KernelSpec:
    return make_spec(kernel, arch, dtype, default_constants(kernel, arch, dtype))


@dataclass
class CompiledKernel:
    kernel: str
    entry: str  # the PTX .entry name
    arch: int
    dtype: str
    constants: Dict[str, object]
    num_warps: int
    shared_bytes: int
    ptx: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.ptx.encode()).hexdigest()


def kernel_constants(kernel: str, config, dtype: str, head_dim: int = 64) -> Dict[str, object]:
    """A tuned ``triton.Config`` of ``kernel`` plus the kernel's compile-time switches."""
    from .tuning import block_d, dot_precision

    constants: Dict[str, object] = dict(config.kwargs)
    if kernel.startswith(("adapter", "mask_attention")):
        constants["BLOCK_D"] = block_d(head_dim)
    if kernel.startswith("adapter"):
        constants["HAS_VALID"] = True
    if kernel == "adapter_attention_fwd":
        constants["STORE_LSE"] = True
    if kernel == "mask_attention_sparse_fwd":
        constants["PARTIAL"] = True  # batch 1 splits its block lists (the case the split exists for)
    if kernel == "mask_weights":
        constants["SIGMOID"] = False
    if kernel != "mask_weights" and kernel != "mask_attention_combine":
        constants["DOT_PRECISION"] = dot_precision("fp32" if kernel == "mask_pool_bwd" else dtype)
    return {**constants, "_num_warps": config.num_warps, "_num_stages": config.num_stages}


def compile_specs(kernel: str, arch: int, dtype: str = "fp16") -> List[Dict[str, object]]:
    """The constants of every config ``kernel`` may run with on ``arch`` (what the static gate compiles)."""
    from .tuning import configs_for, generation_of

    return [kernel_constants(kernel, config, dtype) for config in configs_for(kernel, generation_of(arch))]


def default_constants(kernel: str, arch: int, dtype: str, head_dim: int = 64) -> Dict[str, object]:
    """The first tuned block config of ``arch`` plus the kernel's compile-time switches."""
    from .tuning import configs_for, generation_of

    return kernel_constants(kernel, configs_for(kernel, generation_of(arch))[0], dtype, head_dim)


def compile_kernel(
    kernel: str, arch: int, dtype: str = "fp16", constants: Optional[Dict[str, object]] = None
) -> CompiledKernel:
    """Compile one PyTorch-path kernel (its tuned defaults unless ``constants`` are given)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    if constants is None:
        constants = default_constants(kernel, arch, dtype)
    return compile_spec(make_spec(kernel, arch, dtype, constants))


def _signature(fn, spec: KernelSpec) -> Tuple[Dict[str, str], Dict[tuple, list], Dict[str, Any]]:
    """Triton's signature of ``fn`` for ``spec``, the divisibility hints of the PyTorch-path kernels, and the
    constexprs (the spec's plus unit innermost strides)."""
    signature = {}
    attrs = {}
    constants = dict(spec.constants)
    leading_pointers = True
    plugin = spec.kernel.endswith("_plugin")
    for index, param in enumerate(fn.params):
        arg = param.name
        leading_pointers = leading_pointers and arg.upper() == arg
        pointer = arg.upper() == arg and arg not in PLUGIN_INTS if plugin else leading_pointers
        if param.is_constexpr:
            signature[arg] = "constexpr"
        elif pointer:
            # plugin kernels take every tensor in the engine's precision
            wide = arg in FP32_POINTERS and not plugin
            kind = "fp32" if wide else "i8" if arg in INT8_POINTERS else "i32" if arg in INT32_POINTERS else None
            signature[arg] = "*" + (kind or DTYPES[spec.dtype])
            if not plugin:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif not plugin and arg in UNIT_STRIDES:
            signature[arg] = "constexpr"
            constants[arg] = 1
        else:
            signature[arg] = "fp32" if arg in FLOAT_SCALARS else "i32"
            if not plugin and arg not in FLOAT_SCALARS and (arg in MULTIPLE_OF_16_SIZES or arg.startswith("s")):
                attrs[(index,)] = [["tt.divisibility", 16]]
    if spec.kernel == "cosine_logits":
        signature["P"] = "*fp32"
    return signature, attrs, constants


@lru_cache(maxsize=None)
def compile_spec(spec: KernelSpec) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget

    if spec.kernel not in KERNELS:
        raise ValueError(f"unknown kernel {spec.kernel!r}; known: {', '.join(KERNELS)}")
    if spec.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; got {spec.dtype!r}")
    module, name = KERNELS[spec.kernel]
    fn = getattr(importlib.import_module(f"fisa_rt.kernels.{module}"), name)
    if not isinstance(fn, triton.runtime.JITFunction):
        raise RuntimeError("AOT compilation needs real Triton kernels: unset TRITON_INTERPRET and run again")
    row = targets.target(spec.arch)
    signature, attrs, constants = _signature(fn, spec)
    if spec.aligned_pointers:
        hint = [["tt.divisibility", PLUGIN_POINTER_ALIGNMENT]]
        attrs = {(i,): hint for i, t in enumerate(signature.values()) if t.startswith("*")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    with targets.ptxas_for(row):
        options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, "ptx_version": targets.declared_isa(row)}
        compiled = triton.compile(source, target=GPUTarget("cuda", spec.arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    if spec.params is not None:
        metadata = compiled.metadata
        scratch = (getattr(metadata, "global_scratch_size", 0), getattr(metadata, "profile_scratch_size", 0))
        ptx = exact_entry(ptx, compiled.metadata.name, spec.params, scratch)
    return CompiledKernel(
        kernel=spec.kernel,
        entry=compiled.metadata.name,
        arch=spec.arch,
        dtype=spec.dtype,
        constants=dict(spec.constants),
        num_warps=spec.num_warps,
        shared_bytes=int(compiled.metadata.shared),
        ptx=ptx,
    )


def entry_params(ptx: str, entry: str) -> List[str]:
    """The ``.param`` declarations of ``entry``'s ``.entry`` directive, in order."""
    match = re.search(rf"\.entry {re.escape(entry)}\((.*?)\)", ptx, re.S)
    if match is None:
        raise ValueError(f"no .entry {entry} in the PTX")
    return [p.strip() for p in match.group(1).split(",") if p.strip()]


def exact_entry(ptx: str, entry: str, params: int, scratch_sizes: Tuple[int, int]) -> str:
    """The PTX with ``entry`` taking exactly its first ``params`` parameters.

    Triton >= 3.3 appends two pointers to every kernel (global and profile scratch). TensorRT launches an
    AOT plugin kernel with its inputs, extra_args and outputs only, so the trailing two would be read
    from beyond the parameter buffer it passes. They are dropped when the kernel provably never uses them:
    Triton reports no scratch (its own AOT tool, triton/tools/compile.py, refuses kernels that need any and
    passes null pointers otherwise) and the PTX never loads those parameters.
    """
    declared = entry_params(ptx, entry)
    extra = declared[params:]
    if not extra:
        return ptx
    if any(scratch_sizes):
        raise RuntimeError(f"{entry} needs Triton scratch memory {scratch_sizes}; TensorRT passes no scratch pointers")
    if len(extra) != 2 or not all(".ptr" in p for p in extra):
        raise RuntimeError(f"{entry} takes {len(declared)} parameters, TensorRT passes {params}: {extra}")
    for index in range(params, len(declared)):
        if re.search(rf"\[{re.escape(entry)}_param_{index}\]", ptx):
            raise RuntimeError(f"{entry} reads its scratch parameter {index}; TensorRT would not pass it")
    body = ",\n\t".join(declared[:params])
    pattern = rf"(\.entry {re.escape(entry)}\()(.*?)(\))"
    return re.sub(pattern, lambda m: f"{m.group(1)}\n\t{body}\n{m.group(3)}", ptx, count=1, flags=re.S)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compile fisa-rt's Triton kernels to PTX without a GPU.")
    parser.add_argument(
        "--arch", type=int, action="append", choices=list(targets.TARGETS),
        help="compute capability x10 (87 = Orin, 90 = H100, 110 = Thor, 120 = RTX 50); repeatable; default: all",
    )
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    # the plugin kernels' constants depend on the model: export/build_engine.py compiles those
    standalone = [k for k in KERNELS if not k.endswith("_plugin")]
    parser.add_argument("--kernel", action="append", choices=standalone,
                        help="default: all (the PyTorch path's kernels; build_engine.py --flavour fused compiles "
                             "the TensorRT plugins' PTX for the model it builds)")
    parser.add_argument("--out", required=True, help="folder for <kernel>.sm_<arch>.<dtype>.ptx and index.json")
    args = parser.parse_args(argv)
    arches = args.arch or targets.gated_arches()
    targets.exit_unless_assembled(parser, arches)
    os.makedirs(args.out, exist_ok=True)
    index = []
    for arch in arches:
        for kernel in args.kernel or standalone:
            compiled = compile_kernel(kernel, arch, args.dtype)
            path = os.path.join(args.out, f"{kernel}.sm_{arch}.{args.dtype}.ptx")
            with open(path, "w") as f:
                f.write(compiled.ptx)
            record = {k: v for k, v in asdict(compiled).items() if k != "ptx"}
            index.append({**record, "file": os.path.basename(path), "sha256": compiled.sha256})
            print(f"{path}: entry {compiled.entry}, {compiled.num_warps} warps, {compiled.shared_bytes} B shared")
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=2)


if __name__ == "__main__":
    main()
