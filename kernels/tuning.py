"""Launch configurations of the Triton kernels, per GPU generation, and the autotuned launcher.

Why per generation: Orin (sm_87) has 2/3 of an A100's shared memory per SM (164 KB vs 228 KB on H100,
and 16 SMs instead of 108/132), so deep pipelines that pay on sm_90 spill or under-occupy on sm_87.
Each list is what ``triton.autotune`` chooses from on that generation; the interpreter (CPU tests) gets
one small config, since it would otherwise time every config in NumPy.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import triton

from .backend import interpreting


def _configs(blocks: Sequence[Dict[str, int]], warps: Sequence[int], stages: Sequence[int]) -> List[triton.Config]:
    return [triton.Config(dict(b), num_warps=w, num_stages=s) for b in blocks for w in warps for s in stages]


def _row_col(rows: str, cols: str, row_sizes, col_sizes):
    return [{rows: r, cols: c} for r in row_sizes for c in col_sizes]


# kernel name -> generation (compute capability major*10+minor, rounded down to a listed one) -> configs
TUNING: Dict[str, Dict[int, List[triton.Config]]] = {
    # Flash-style row blocks of visual tokens x column blocks of classes.
    "adapter_attention_fwd": {
        80: _configs(_row_col("BLOCK_N", "BLOCK_K", (64, 128), (32, 64)), (4, 8), (2, 3)),
        87: _configs(_row_col("BLOCK_N", "BLOCK_K", (64, 128), (16, 32)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_N", "BLOCK_K", (64, 128), (32, 64, 128)), (4, 8), (3, 4)),
    },
    "adapter_attention_bwd": {
        80: _configs(_row_col("BLOCK_N", "BLOCK_K", (64, 128), (32, 64)), (4, 8), (2,)),
        87: _configs(_row_col("BLOCK_N", "BLOCK_K", (64,), (16, 32)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_N", "BLOCK_K", (64, 128), (32, 64)), (4, 8), (2, 3)),
    },
    # Row blocks of mask tokens x column blocks of image tokens.
    "mask_attention_fwd": {
        80: _configs(_row_col("BLOCK_Q", "BLOCK_N", (32, 64), (64, 128)), (4, 8), (2, 3)),
        87: _configs(_row_col("BLOCK_Q", "BLOCK_N", (32, 64), (64,)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_Q", "BLOCK_N", (64, 128), (64, 128)), (4, 8), (3, 4)),
    },
    "mask_attention_bwd": {
        80: _configs(_row_col("BLOCK_Q", "BLOCK_N", (32, 64), (64,)), (4, 8), (2,)),
        87: _configs(_row_col("BLOCK_Q", "BLOCK_N", (32,), (64,)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_Q", "BLOCK_N", (64,), (64, 128)), (4, 8), (2, 3)),
    },
    # Mask blocks x channel blocks, looping over feature-map positions.
    "mask_pool_fwd": {
        80: _configs(_row_col("BLOCK_Q", "BLOCK_C", (32, 64), (64, 128)), (4, 8), (2, 3)),
        87: _configs(_row_col("BLOCK_Q", "BLOCK_C", (32, 64), (64,)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_Q", "BLOCK_C", (64, 128), (64, 128)), (4, 8), (3, 4)),
    },
    "mask_pool_bwd": {
        80: _configs(_row_col("BLOCK_C", "BLOCK_HW", (64,), (64, 128)), (4, 8), (2,)),
        87: _configs(_row_col("BLOCK_C", "BLOCK_HW", (64,), (64,)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_C", "BLOCK_HW", (64, 128), (64, 128)), (4, 8), (2, 3)),
    },
    # TensorRT plugin: mask blocks x class blocks, pooling recomputed per class block.
    "mask_average_logits_plugin": {
        80: _configs(_row_col("BLOCK_Q", "BLOCK_K", (32, 64), (64,)), (4,), (2,)),
        87: _configs(_row_col("BLOCK_Q", "BLOCK_K", (32,), (64,)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_Q", "BLOCK_K", (64,), (64, 128)), (4, 8), (2, 3)),
    },
    # Pooled rows x class blocks, looping over channels.
    "cosine_logits": {
        80: _configs(_row_col("BLOCK_M", "BLOCK_K", (32, 64), (64, 128)), (4,), (2, 3)),
        87: _configs(_row_col("BLOCK_M", "BLOCK_K", (32, 64), (64,)), (4,), (2,)),
        90: _configs(_row_col("BLOCK_M", "BLOCK_K", (64, 128), (64, 128)), (4, 8), (3,)),
    },
}

# What the interpreter runs: the smallest blocks tl.dot accepts, so CPU tests stay fast.
INTERPRETER: Dict[str, Dict[str, int]] = {
    "adapter_attention_fwd": {"BLOCK_N": 16, "BLOCK_K": 16},
    "adapter_attention_bwd": {"BLOCK_N": 16, "BLOCK_K": 16},
    "mask_attention_fwd": {"BLOCK_Q": 16, "BLOCK_N": 16},
    "mask_attention_bwd": {"BLOCK_Q": 16, "BLOCK_N": 16},
    "mask_pool_fwd": {"BLOCK_Q": 16, "BLOCK_C": 16},
    "mask_pool_bwd": {"BLOCK_C": 16, "BLOCK_HW": 16},
    "cosine_logits": {"BLOCK_M": 16, "BLOCK_K": 16},
    "mask_average_logits_plugin": {"BLOCK_Q": 16, "BLOCK_K": 16},
}
# Inner-loop block sizes that are not tuned (set for every config of the kernel).
FIXED: Dict[str, Dict[str, int]] = {
    "mask_pool_fwd": {"BLOCK_HW": 32},
    "mask_pool_bwd": {"BLOCK_Q": 32},
    "cosine_logits": {"BLOCK_C": 32},
    "mask_average_logits_plugin": {"BLOCK_C": 32, "BLOCK_HW": 32},
}


def generation_of(cc: int) -> int:
    """Compute capability x10 (87 for Orin) -> the listed generation whose configs it uses."""
    return max((g for g in (80, 87, 90) if g <= cc), default=80) if cc < 100 else 90


def generation(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return generation_of(10 * major + minor)


def block_d(head_dim: int) -> int:
    """The head dimension padded to a power of two, and to 16 at least (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype) -> str:
    """tl.dot's input precision for a torch dtype or a name ("fp32", "fp16", "bf16"): fp32 operands keep
    fp32 products (the reference's accuracy; TF32 would cost ~1e-3 relative error); 16-bit ones ignore it."""
    return "ieee" if dtype in (torch.float32, "fp32") else "tf32"


def configs_for(name: str, gen: int) -> List[triton.Config]:
    fixed = FIXED.get(name, {})
    return [triton.Config({**c.kwargs, **fixed}, num_warps=c.num_warps, num_stages=c.num_stages) for c in TUNING[name][gen]]


_LAUNCHERS: Dict[Tuple[str, int], Callable] = {}


def launch(name: str, kernel, grid: Callable, args: tuple, kwargs: dict, device: torch.device, key: Sequence[str], reset: Sequence[str] = ()):
    """Run ``kernel`` with the block sizes autotuned for ``device``'s generation (keyed by ``key``
    arguments); ``reset`` names output buffers that the kernel accumulates into, which the autotuner
    must zero between its timing runs."""
    if interpreting():
        meta = {**INTERPRETER[name], **FIXED.get(name, {})}
        kernel[lambda _: grid(meta)](*args, **kwargs, **meta)
        return
    gen = generation(device)
    tuned = _LAUNCHERS.get((name, gen))
    if tuned is None:
        tuned = triton.autotune(configs=configs_for(name, gen), key=list(key), reset_to_zero=list(reset) or None)(kernel)
        _LAUNCHERS[(name, gen)] = tuned
    tuned[grid](*args, **kwargs)
