"""The TensorRT-free half of the TensorRT plugins (``fisa_rt.export.plugins``): for given tensor shapes, which
kernel, which compile-time constants, which grid and which scalar arguments each plugin launches.

It lives with the kernels, below the export, because the kernels' own tools use it too: the ptxas gate
(``gate.py``) compiles ``example_launches`` as the engine build would, and ``launch_jit`` runs a launch through
Triton's JIT or its interpreter (``fisa_rt.export.fused_onnxruntime``). Calling convention (TensorRT's, for AOT
kernels): ``kernel(inputs..., extra_args..., outputs...)``.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from .aot import CompiledKernel, KernelSpec, compile_spec, make_spec
from .tuning import block_d, configs_for, dot_precision, generation_of

LOG2E = 1.4426950408889634


@dataclass
class PluginLaunch:
    spec: KernelSpec  # the kernel and everything its PTX is specialised for
    grid: Tuple[Any, Any, Any]  # ints, or TensorRT symbolic expressions inside aot_impl
    threads: int
    extra_args: List[Any]  # the kernel's int scalars, between the inputs and the outputs
    inputs: int
    outputs: int

    def compile(self) -> CompiledKernel:
        """The PTX, whose .entry takes exactly TensorRT's parameters (inputs, extra_args, outputs)."""
        return compile_spec(self.spec)


def cdiv(a, b: int):
    return (a + (b - 1)) // b


def _spec(kernel: str, tuned: str, arch: int, dtype: str, constants: Dict[str, Any], params: int,
          widest: str = "") -> KernelSpec:
    """The first tuned config of ``arch``'s generation (or, with ``widest``, the first of those with the
    largest such block): an engine embeds one kernel, so there is no autotuning at run time."""
    configs = configs_for(tuned, generation_of(arch))
    if widest:
        configs = [c for c in configs if c.kwargs[widest] == max(c.kwargs[widest] for c in configs)]
    config = configs[0]
    meta = {**config.kwargs, **constants, "_num_warps": config.num_warps, "_num_stages": config.num_stages}
    return make_spec(kernel, arch, dtype, meta, params)


def _static(value, what: str) -> int:
    if isinstance(value, int):
        return value
    if getattr(value, "is_constant", False):
        return int(value.constant_value())
    raise ValueError(f"{what} must be fixed when the engine is built (export with a fixed image size)")


def adapter_attention_launch(q_shape: Sequence, k_shape: Sequence, dtype: str, arch: int) -> PluginLaunch:
    B, H, N, D = q_shape
    KN = k_shape[2]
    H, D = _static(H, "heads"), _static(D, "head dim")
    spec = _spec("adapter_attention_plugin", "adapter_attention_fwd", arch, dtype, {
        "H": H, "D": D, "QK_SCALE": D ** -0.5 * LOG2E, "DOT_PRECISION": dot_precision(dtype), "BLOCK_D": block_d(D),
    }, params=3 + 2 + 1)
    grid = (cdiv(N, spec.constant("BLOCK_N")), B * H, 1)
    return PluginLaunch(spec, grid, 32 * spec.num_warps, [N, KN], inputs=3, outputs=1)


def mask_attention_launch(q_shape: Sequence, k_shape: Sequence, mask_shape: Sequence, grid: Tuple[int, int],
                          threshold: float, dtype: str, arch: int) -> PluginLaunch:
    B, H, NQ, D = q_shape
    H, NQ, D = _static(H, "heads"), _static(NQ, "queries"), _static(D, "head dim")
    HM, WM = _static(mask_shape[2], "mask height"), _static(mask_shape[3], "mask width")
    if _static(k_shape[2], "image tokens") != grid[0] * grid[1]:
        raise ValueError(f"k_img has {k_shape[2]} tokens, the grid {grid} has {grid[0] * grid[1]}")
    spec = _spec("mask_attention_plugin", "mask_attention_fwd", arch, dtype, {
        "H": H, "NQ": NQ, "GH": int(grid[0]), "GW": int(grid[1]), "D": D, "HM": HM, "WM": WM,
        "THRESHOLD": float(threshold), "QK_SCALE": D ** -0.5 * LOG2E, "DOT_PRECISION": dot_precision(dtype),
        "BLOCK_D": block_d(D),
    }, params=6 + 1 + 1)
    grid = (cdiv(NQ, spec.constant("BLOCK_Q")), B * H, 1)
    return PluginLaunch(spec, grid, 32 * spec.num_warps, [B], inputs=6, outputs=1)


def mask_pool_launch(mask_shape: Sequence, dense_shape: Sequence, sigmoid: bool, threshold: float, dtype: str,
                     arch: int) -> PluginLaunch:
    B = mask_shape[0]
    NQ, HM, WM = (_static(d, "mask size") for d in mask_shape[1:])
    C, HF, WF = (_static(d, "feature size") for d in dense_shape[1:])
    spec = _spec("mask_pool_plugin", "mask_pool_fwd", arch, dtype, {
        "NQ": NQ, "C": C, "HF": HF, "WF": WF, "HM": HM, "WM": WM, "THRESHOLD": float(threshold),
        "SIGMOID": bool(sigmoid), "DOT_PRECISION": dot_precision(dtype),
    }, params=2 + 0 + 1, widest="BLOCK_C")  # fewest channel tiles: each samples every mask tile once
    grid = (cdiv(NQ, spec.constant("BLOCK_Q")), cdiv(C, spec.constant("BLOCK_C")), B)
    return PluginLaunch(spec, grid, 32 * spec.num_warps, [], inputs=2, outputs=1)


def example_launches(arch: int, dtype: str = "fp16") -> Dict[str, PluginLaunch]:
    """Each plugin at the sizes of a ViT-B/16 model at 640 px (1600 visual tokens, 100 queries, 1203
    classes) and of FC-CLIP's ConvNeXt-L head: what the ptxas gate and tests compile."""
    return {
        "AdapterAttention": adapter_attention_launch((2, 12, 1600, 64), (1, 12, 1203, 64), dtype, arch),
        "MaskAttention": mask_attention_launch(
            (2, 12, 100, 64), (2, 12, 1600, 64), (2, 100, 160, 160), (40, 40), 0.0, dtype, arch
        ),
        "MaskPool": mask_pool_launch((2, 250, 256, 256), (2, 768, 32, 32), False, 0.0, dtype, arch),
    }


def check_alignment(pointers: Sequence[int], what: str) -> None:
    """The PTX assumes PLUGIN_POINTER_ALIGNMENT-byte aligned buffers (aot.py); refuse others."""
    from .aot import PLUGIN_POINTER_ALIGNMENT

    bad = [p for p in pointers if p % PLUGIN_POINTER_ALIGNMENT]
    if bad:
        raise ValueError(f"{what}: buffers must be {PLUGIN_POINTER_ALIGNMENT}-byte aligned; got addresses {bad}")


def launch_jit(launch: PluginLaunch, inputs: Sequence, outputs: Sequence) -> None:
    """Run the launch's kernel through Triton's JIT (or its interpreter) on torch tensors, with exactly
    the parameters and constants the AOT PTX takes: inputs, extra_args, outputs."""
    import importlib

    from .aot import KERNELS

    module, name = KERNELS[launch.spec.kernel]
    kernel = getattr(importlib.import_module(f"fisa_rt.kernels.{module}"), name)
    tensors = list(inputs) + list(outputs)
    if any(not t.is_contiguous() for t in tensors):
        raise ValueError(f"{launch.spec.kernel}: the plugin kernels take contiguous tensors")
    check_alignment([t.data_ptr() for t in tensors], launch.spec.kernel)
    grid = tuple(int(g) for g in launch.grid)
    kernel[grid](*inputs, *(int(a) for a in launch.extra_args), *outputs, **dict(launch.spec.constants),
                 num_warps=launch.spec.num_warps, num_stages=launch.spec.num_stages)
