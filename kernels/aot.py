"""Ahead-of-time compilation of the Triton kernels to PTX for a given GPU, on any machine.

TensorRT's AOT plugins (``tensorrt.plugin.aot_impl``) embed PTX in the engine, so a Jetson (sm_87) or an
H100 (sm_90) engine can be built and validated where no such GPU exists. ``triton.compile`` needs only
the CUDA backend that ships with the triton wheel (LLVM + ptxas), not a GPU.

    python -m fisa_rt.kernels.aot --arch 87 --dtype fp16 --out ptx/   # writes <kernel>.sm_87.fp16.ptx + index.json

Must run without ``TRITON_INTERPRET``: the interpreter replaces kernels by Python functions that have
no compiler path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

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
    "mask_average_logits_plugin": ("plugin_kernels_triton", "mask_average_logits_plugin_kernel"),
}
# The plugin kernels' int scalars (TensorRT's calling convention puts them between inputs and outputs).
PLUGIN_INTS = {"N", "KN", "B"}
# Every kernel takes its pointers first (upper-case names), then strides and sizes (i32) and float scalars.
# Pointer arguments that are not in the data dtype; the other pointers are data tensors.
FP32_POINTERS = {"LSE", "DELTA", "DK", "DV", "DKI", "DVI", "P", "AREA", "G", "M", "LP"}
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


def compile_kernel(kernel: str, arch: int, dtype: str = "fp16", constants: Optional[Dict[str, object]] = None) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget

    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}")
    module, name = KERNELS[kernel]
    fn = getattr(importlib.import_module(f"fisa_rt.kernels.{module}"), name)
    if not isinstance(fn, triton.runtime.JITFunction):
        raise RuntimeError("AOT compilation needs real Triton kernels: unset TRITON_INTERPRET and run again")
    constants = dict(default_constants(kernel, arch, dtype) if constants is None else constants)
    num_warps = int(constants.pop("_num_warps", 4))
    num_stages = int(constants.pop("_num_stages", 3))
    signature = {}
    attrs = {}
    leading_pointers = True
    plugin = kernel.endswith("_plugin")
    for index, param in enumerate(fn.params):
        arg = param.name
        leading_pointers = leading_pointers and arg.upper() == arg
        pointer = arg.upper() == arg and arg not in PLUGIN_INTS if plugin else leading_pointers
        if param.is_constexpr:
            signature[arg] = "constexpr"
        elif pointer:
            # plugin kernels take every tensor in the engine's precision
            wide = arg in FP32_POINTERS and not plugin
            kind = "fp32" if wide else "i8" if arg in INT8_POINTERS else "i32" if arg in INT32_POINTERS else DTYPES[dtype]
            signature[arg] = "*" + kind
            if not plugin:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif not plugin and arg in UNIT_STRIDES:
            signature[arg] = "constexpr"
            constants[arg] = 1
        else:
            signature[arg] = "fp32" if arg in FLOAT_SCALARS else "i32"
            if not plugin and arg not in FLOAT_SCALARS and (arg in MULTIPLE_OF_16_SIZES or arg.startswith("s")):
                attrs[(index,)] = [["tt.divisibility", 16]]
    if kernel == "cosine_logits":
        signature["P"] = "*fp32"
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    return CompiledKernel(
        kernel=kernel,
        entry=compiled.metadata.name,
        arch=arch,
        dtype=dtype,
        constants=constants,
        num_warps=num_warps,
        shared_bytes=int(compiled.metadata.shared),
        ptx=compiled.asm["ptx"],
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compile fisa-rt's Triton kernels to PTX without a GPU.")
    parser.add_argument("--arch", type=int, action="append", help="compute capability x10 (87 = Orin, 90 = H100); repeatable")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--kernel", action="append", choices=list(KERNELS), help="default: all")
    parser.add_argument("--out", required=True, help="folder for <kernel>.sm_<arch>.<dtype>.ptx and index.json")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    index = []
    for arch in args.arch or [87, 90]:
        # the plugin kernels' constants depend on the model: export/build_engine.py compiles those
        for kernel in args.kernel or [k for k in KERNELS if not k.endswith("_plugin")]:
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
