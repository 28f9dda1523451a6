"""Launch configurations of the Triton kernels, per GPU generation, and the autotuned launcher.

Why per generation: Orin (sm_87) has 2/3 of an A100's shared memory per SM (164 KB vs 228 KB on H100,
and 16 SMs instead of 108/132), so deep pipelines that pay on sm_90 spill or under-occupy on sm_87.
Each list is what ``triton.autotune`` chooses from on that generation (``targets.TARGETS`` maps every
compute capability to one); the interpreter (CPU tests) gets one small config, since it would otherwise
time every config in NumPy.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import triton
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import wrap_triton

from . import targets
from .dispatch import interpreting, size_bucket


# kernel name -> generation (targets.Target.generation) -> configs. Every config here passes the static
# gate (``python -m fisa_rt.kernels.gate``: fits the target's shared memory, no register spills, vector
# loads or cp.async where memory-bound) on every target that runs it (benchmarks/results/ptxas-gate.md);
# the configs that failed it were removed (docs/design.md lists them). Generation 80 (sm_80/86/89) runs
# Orin's lists: they were gated on sm_87 against 99 KB, the smallest per-block limit of the three.
def _cfg(warps: int, stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=warps, num_stages=stages)


_ORIN: Dict[str, List[triton.Config]] = {
    "adapter_attention_fwd": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=32), _cfg(4, 2, BLOCK_N=128, BLOCK_K=32)],
    "adapter_attention_bwd": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=32)],
    "adapter_attention_bwd_kv": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=32)],
    "mask_attention_fwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=64)],
    # (64, 32) tiles: on sm_87 the backward spills at (64, 64) (84-132 B, 4 or 8 warps) and at (32, 64)
    "mask_attention_sparse_fwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=32)],
    "mask_attention_combine": [_cfg(4, 1, BLOCK_Q=16)],
    "mask_attention_sparse_bwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=32)],
    "mask_weights": [_cfg(4, 1, BLOCK_Q=16, BLOCK_HW=128)],
    # The TensorRT plugin embeds the first 128-channel config (plugin_launches.mask_pool_launch), so every
    # generation lists it with 8 warps first: with 4, the plugin kernel needs 235-255 registers (sm_80: 255) under
    # Triton 3.8 and spills 848 B on sm_90 under 3.9; with 8, 157-233 (3.6: 118-169) and no spill on any target.
    "mask_pool_fwd": [
        _cfg(4, 3, BLOCK_Q=64, BLOCK_C=64), _cfg(8, 3, BLOCK_Q=64, BLOCK_C=128), _cfg(4, 3, BLOCK_Q=64, BLOCK_C=128),
    ],
    "mask_pool_bwd": [_cfg(8, 2, BLOCK_C=64, BLOCK_HW=64)],
    "cosine_logits": [_cfg(4, 3, BLOCK_M=64, BLOCK_K=64)],
}
_HOPPER: Dict[str, List[triton.Config]] = {
    # Flash-style row blocks of visual tokens x column blocks of classes.
    "adapter_attention_fwd": [
        _cfg(4, 3, BLOCK_N=64, BLOCK_K=64), _cfg(8, 3, BLOCK_N=128, BLOCK_K=64),
        _cfg(4, 3, BLOCK_N=64, BLOCK_K=128), _cfg(8, 3, BLOCK_N=128, BLOCK_K=128),
    ],
    # dQ pass: row blocks of visual tokens walking the classes.
    "adapter_attention_bwd": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=64), _cfg(8, 2, BLOCK_N=128, BLOCK_K=64)],
    # dK/dV pass: column blocks of classes walking every visual token (deterministic: no atomics).
    "adapter_attention_bwd_kv": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=64), _cfg(8, 2, BLOCK_N=64, BLOCK_K=64)],
    # TensorRT plugin's single-launch masked attention: row blocks of mask tokens x image-token blocks.
    "mask_attention_fwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=64)],
    # Block-sparse masked attention: the tiles (BLOCK_Q, BLOCK_N) are the MaskLayout's, so they are fixed
    # per generation (mask_tiles) and only warps and stages are tuned.
    "mask_attention_sparse_fwd": [
        _cfg(4, 2, BLOCK_Q=64, BLOCK_N=64), _cfg(4, 3, BLOCK_Q=64, BLOCK_N=64), _cfg(8, 2, BLOCK_Q=64, BLOCK_N=64),
    ],
    # Merge of the split-K partial outputs: a few KB per program, so small blocks spread it over the SMs.
    "mask_attention_combine": [_cfg(4, 1, BLOCK_Q=16)],
    "mask_attention_sparse_bwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=64), _cfg(8, 2, BLOCK_Q=64, BLOCK_N=64)],
    # Mask weights sampled once: blocks of masks x blocks of feature cells.
    "mask_weights": [_cfg(4, 1, BLOCK_Q=16, BLOCK_HW=128)],
    # Pooling GEMM: mask blocks x channel blocks, looping over feature cells (128 channels: 8 warps first, see Orin).
    "mask_pool_fwd": [
        _cfg(4, 3, BLOCK_Q=64, BLOCK_C=64), _cfg(8, 3, BLOCK_Q=64, BLOCK_C=128), _cfg(4, 3, BLOCK_Q=64, BLOCK_C=128),
        _cfg(8, 3, BLOCK_Q=128, BLOCK_C=64), _cfg(8, 3, BLOCK_Q=128, BLOCK_C=128),
    ],
    # Feature gradient: channel blocks x cell blocks, looping over masks (fp32 products: 8 warps, or it spills).
    "mask_pool_bwd": [_cfg(8, 2, BLOCK_C=64, BLOCK_HW=64)],
    # Pooled rows x class blocks, looping over channels.
    "cosine_logits": [
        _cfg(4, 3, BLOCK_M=64, BLOCK_K=64), _cfg(8, 3, BLOCK_M=64, BLOCK_K=128),
        _cfg(8, 3, BLOCK_M=128, BLOCK_K=64), _cfg(8, 3, BLOCK_M=128, BLOCK_K=128),
    ],
}
# Jetson Thor (sm_110; sm_101 before CUDA 13): an H100's 227 KB per block but 20 SMs. Shared memory
# allows Hopper's 3-stage pipelines; the SM count asks for Orin's 64-row tiles, which give batch 1 several
# waves (1600 tokens / 64 x 12 heads = 300 programs on 20 SMs) where 128-row tiles would leave SMs idle in
# the last one.
_THOR: Dict[str, List[triton.Config]] = {
    # (8 warps, 128 x 64) spills 16 B on sm_101, as it does on sm_100
    "adapter_attention_fwd": [_cfg(4, 3, BLOCK_N=64, BLOCK_K=64), _cfg(4, 3, BLOCK_N=64, BLOCK_K=128)],
    "adapter_attention_bwd": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=64)],
    "adapter_attention_bwd_kv": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=64)],
    "mask_attention_fwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=64)],
    "mask_attention_sparse_fwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=64), _cfg(4, 3, BLOCK_Q=64, BLOCK_N=64)],
    "mask_attention_combine": [_cfg(4, 1, BLOCK_Q=16)],
    "mask_attention_sparse_bwd": [_cfg(4, 2, BLOCK_Q=64, BLOCK_N=64)],
    "mask_weights": [_cfg(4, 1, BLOCK_Q=16, BLOCK_HW=128)],
    # 128 channels: 8 warps first, see Orin
    "mask_pool_fwd": [
        _cfg(4, 3, BLOCK_Q=64, BLOCK_C=64), _cfg(8, 3, BLOCK_Q=64, BLOCK_C=128), _cfg(4, 3, BLOCK_Q=64, BLOCK_C=128),
    ],
    "mask_pool_bwd": [_cfg(8, 2, BLOCK_C=64, BLOCK_HW=64)],
    "cosine_logits": [_cfg(4, 3, BLOCK_M=64, BLOCK_K=64), _cfg(8, 3, BLOCK_M=64, BLOCK_K=128)],
}
# RTX 50 / RTX PRO / GB10 (sm_120, sm_121): 99 KB per block like sm_86/89 (no wgmma or tcgen05: mma.sync),
# but 36-188 SMs. Orin's lists fit the shared memory; the wider tiles added here halve the re-reads of the
# classes and channels when the many SMs are filled anyway (large batches, 1203 classes).
_RTX50: Dict[str, List[triton.Config]] = {
    **_ORIN,
    "adapter_attention_fwd": [*_ORIN["adapter_attention_fwd"], _cfg(4, 2, BLOCK_N=64, BLOCK_K=64)],
    # 128 channels with 8 warps: with Orin's 4 the plugin kernel spills 556 B on sm_120 (255 registers)
    "mask_pool_fwd": [
        _cfg(4, 3, BLOCK_Q=64, BLOCK_C=64), _cfg(8, 3, BLOCK_Q=64, BLOCK_C=128), _cfg(8, 2, BLOCK_Q=128, BLOCK_C=64),
    ],
    "cosine_logits": [*_ORIN["cosine_logits"], _cfg(8, 2, BLOCK_M=64, BLOCK_K=128)],
}
# A100 / RTX 30 / RTX 40 (sm_80/86/89): Orin's lists (gated against 99 KB), except the adapter's dK/dV pass,
# whose 4-warp config spills 36 B on sm_80 (not on sm_87); 8 warps halve its registers per thread.
_AMPERE: Dict[str, List[triton.Config]] = {
    **_ORIN, "adapter_attention_bwd_kv": [_cfg(8, 2, BLOCK_N=64, BLOCK_K=32)],
}
# B200/B300 (sm_100/103) have an H100's shared memory per block and 148 SMs to its 132: Hopper's lists, less
# the two 8-warp configs that spill 8 B on sm_100 (ptxas holds them to 128 registers there).
_BLACKWELL: Dict[str, List[triton.Config]] = {
    **_HOPPER,
    "adapter_attention_fwd": [
        _cfg(4, 3, BLOCK_N=64, BLOCK_K=64), _cfg(4, 3, BLOCK_N=64, BLOCK_K=128), _cfg(8, 3, BLOCK_N=128, BLOCK_K=128),
    ],
    "adapter_attention_bwd_kv": [_cfg(4, 2, BLOCK_N=64, BLOCK_K=64)],
}
TUNING: Dict[str, Dict[int, List[triton.Config]]] = {
    name: {80: _AMPERE[name], 87: _ORIN[name], 90: _HOPPER[name], 100: _BLACKWELL[name], 110: _THOR[name],
           120: _RTX50[name]}
    for name in _HOPPER
}
# A GPU newer than every row of targets.TARGETS runs these: gated against 99 KB, the smallest per-block
# limit of any GPU since sm_80, so they launch wherever Triton can compile at all.
FALLBACK_GENERATION = 80

# What the interpreter runs: few programs (each costs the interpreter a fixed overhead), so CPU tests stay fast.
INTERPRETER: Dict[str, Dict[str, int]] = {
    "adapter_attention_fwd": {"BLOCK_N": 64, "BLOCK_K": 16},
    "adapter_attention_bwd": {"BLOCK_N": 64, "BLOCK_K": 16},
    "adapter_attention_bwd_kv": {"BLOCK_N": 128, "BLOCK_K": 16},
    "mask_attention_fwd": {"BLOCK_Q": 16, "BLOCK_N": 16},
    # realistic-size CPU tests (N >= 1024, Q >= 100) walk fewer, larger tiles
    "mask_attention_sparse_fwd": {"BLOCK_Q": 32, "BLOCK_N": 64},
    "mask_attention_sparse_bwd": {"BLOCK_Q": 32, "BLOCK_N": 64},
    "mask_attention_combine": {"BLOCK_Q": 16},
    "mask_weights": {"BLOCK_Q": 64, "BLOCK_HW": 256},
    "mask_pool_fwd": {"BLOCK_Q": 64, "BLOCK_C": 32},
    "mask_pool_bwd": {"BLOCK_C": 32, "BLOCK_HW": 256},
    "cosine_logits": {"BLOCK_M": 16, "BLOCK_K": 16},
}
# Inner-loop block sizes that are not tuned (set for every config of the kernel).
FIXED: Dict[str, Dict[str, int]] = {
    "mask_pool_fwd": {"BLOCK_HW": 64},
    "mask_pool_bwd": {"BLOCK_Q": 32},
    "cosine_logits": {"BLOCK_C": 32},
}


def generation_of(cc: int) -> int:
    """Compute capability x10 (87 for Orin) -> the generation whose configs it uses; FALLBACK_GENERATION
    for one that targets.TARGETS does not know (generation() says so once)."""
    row = targets.TARGETS.get(cc)
    return row.generation if row else FALLBACK_GENERATION


_WARNED = set()


def generation(device: torch.device) -> int:
    cc = targets.arch_of(torch.cuda.get_device_capability(device))
    if cc not in targets.TARGETS and cc not in _WARNED:
        _WARNED.add(cc)
        warnings.warn(fallback_message(cc), RuntimeWarning, stacklevel=2)
    return generation_of(cc)


def fallback_message(cc: int) -> str:
    return (
        f"GPU compute capability {cc // 10}.{cc % 10} has no tuned kernel configs; using the sm_80 lists (they fit "
        "99 KB of shared memory per block); results are correct, speed is untuned (docs/design.md)"
    )


def block_d(head_dim: int) -> int:
    """The head dimension padded to a power of two, and to 16 at least (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype) -> str:
    """tl.dot's input precision for a torch dtype or a name ("fp32", "fp16", "bf16"): fp32 operands keep
    fp32 products (the reference's accuracy; TF32 would cost ~1e-3 relative error); 16-bit ones ignore it."""
    return "ieee" if dtype in (torch.float32, "fp32") else "tf32"


def configs_for(name: str, gen: int) -> List[triton.Config]:
    fixed = FIXED.get(name, {})
    return [
        triton.Config({**c.kwargs, **fixed}, num_warps=c.num_warps, num_stages=c.num_stages) for c in TUNING[name][gen]
    ]


def mask_tiles(device: torch.device) -> Tuple[int, int]:
    """(BLOCK_Q, BLOCK_N) of the masked-attention kernels on ``device``: the MaskLayout's block size."""
    meta = (
        INTERPRETER["mask_attention_sparse_fwd"]
        if interpreting()
        else configs_for("mask_attention_sparse_fwd", generation(device))[0].kwargs
    )
    return meta["BLOCK_Q"], meta["BLOCK_N"]


_LAUNCHERS: Dict[Tuple, Callable] = {}


def launch(
    name: str,
    kernel,
    grid: Callable,
    args: tuple,
    kwargs: dict,
    device: torch.device,
    bucket: Sequence[int],
    reset: Sequence[str] = (),
):
    """Run ``kernel`` with the block sizes autotuned for ``device``'s generation and the power-of-two
    buckets of the sizes ``bucket``; ``reset`` names output buffers that the kernel accumulates into, which
    the autotuner must zero between its timing runs. ``wrap_triton`` shows the launch to torch.compile and
    torch.export (``custom_ops.py``)."""
    if interpreting():
        if any(isinstance(a, FakeTensor) for a in args):
            return  # the interpreted op's fake impl: outputs are allocated, nothing to compute
        meta = {**INTERPRETER[name], **FIXED.get(name, {})}
        # launched directly: torch < 2.14 refuses wrap_triton on an InterpretedFunction (Triton 3.6)
        kernel[lambda _: grid(meta)](*args, **kwargs, **meta)
        return
    gen = generation(device)
    cache_key = (name, gen, tuple(size_bucket(n) for n in bucket))
    tuned = _LAUNCHERS.get(cache_key)
    if tuned is None:
        # one autotuner per bucket, keyed on nothing else (Triton adds the dtypes): tuned once per bucket
        tuned = triton.autotune(configs=configs_for(name, gen), key=[], reset_to_zero=list(reset) or None)(kernel)
        _LAUNCHERS[cache_key] = tuned
    wrap_triton(tuned)[grid](*args, **kwargs)
