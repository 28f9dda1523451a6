"""The fused kernels as TensorRT "quickly deployable" plugins with AOT implementations (TensorRT >= 10.9).

Each plugin's ``aot_impl`` returns Triton-compiled PTX plus its launch parameters, so the engine embeds
the kernel and runs with no Python on the device. The TensorRT-free half of each plugin — which kernel,
which compile-time constants, which grid and which scalar arguments, for given tensor shapes — is a plain
function here (``*_launch``), tested on a machine without TensorRT or a GPU (``tests/test_plugins.py``);
``register_plugins`` only wraps those functions in ``tensorrt.plugin``'s decorators.

Node <-> plugin contract (``kernels/onnx_ops.py``): ``fisa_rt::AdapterAttention(q, k, v)``,
``fisa_rt::MaskAttention(q, k_img, v_img, k_self, v_self, mask_logits; grid_h, grid_w, threshold)``,
``fisa_rt::MaskAverageLogits(mask_logits, dense, text; logit_scale, sigmoid, threshold)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Sequence, Tuple

from fisa_rt.kernels.aot import CompiledKernel, compile_kernel
from fisa_rt.kernels.tuning import block_d, configs_for, dot_precision, generation_of

LOG2E = 1.4426950408889634
PLUGINS = ("AdapterAttention", "MaskAttention", "MaskAverageLogits")


@dataclass
class PluginLaunch:
    kernel: CompiledKernel
    grid: Tuple[Any, Any, Any]  # ints, or TensorRT symbolic expressions inside aot_impl
    threads: int
    extra_args: List[Any]  # the kernel's int scalars, in order


def cdiv(a, b: int):
    return (a + (b - 1)) // b


@lru_cache(maxsize=None)
def _compile(kernel: str, arch: int, dtype: str, constants: Tuple[Tuple[str, Any], ...]) -> CompiledKernel:
    return compile_kernel(kernel, arch, dtype, dict(constants))


def _launch(kernel: str, tuned: str, arch: int, dtype: str, constants: Dict[str, Any]) -> Tuple[CompiledKernel, Dict[str, Any]]:
    config = configs_for(tuned, generation_of(arch))[0]
    meta = {**config.kwargs, **constants, "_num_warps": config.num_warps, "_num_stages": config.num_stages}
    return _compile(kernel, arch, dtype, tuple(sorted(meta.items()))), meta


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
    compiled, meta = _launch("adapter_attention_plugin", "adapter_attention_fwd", arch, dtype, {
        "H": H, "D": D, "QK_SCALE": D ** -0.5 * LOG2E, "DOT_PRECISION": dot_precision(dtype), "BLOCK_D": block_d(D),
    })
    return PluginLaunch(compiled, (cdiv(N, meta["BLOCK_N"]), B * H, 1), 32 * meta["_num_warps"], [N, KN])


def mask_attention_launch(q_shape: Sequence, k_shape: Sequence, mask_shape: Sequence, grid: Tuple[int, int], threshold: float, dtype: str, arch: int) -> PluginLaunch:
    B, H, NQ, D = q_shape
    H, NQ, D = _static(H, "heads"), _static(NQ, "queries"), _static(D, "head dim")
    HM, WM = _static(mask_shape[2], "mask height"), _static(mask_shape[3], "mask width")
    if _static(k_shape[2], "image tokens") != grid[0] * grid[1]:
        raise ValueError(f"k_img has {k_shape[2]} tokens, the grid {grid} has {grid[0] * grid[1]}")
    compiled, meta = _launch("mask_attention_plugin", "mask_attention_fwd", arch, dtype, {
        "H": H, "NQ": NQ, "GH": int(grid[0]), "GW": int(grid[1]), "D": D, "HM": HM, "WM": WM, "THRESHOLD": float(threshold),
        "QK_SCALE": D ** -0.5 * LOG2E, "DOT_PRECISION": dot_precision(dtype), "BLOCK_D": block_d(D),
    })
    return PluginLaunch(compiled, (cdiv(NQ, meta["BLOCK_Q"]), B * H, 1), 32 * meta["_num_warps"], [B])


def mask_average_logits_launch(mask_shape: Sequence, dense_shape: Sequence, text_shape: Sequence, logit_scale: float,
                               sigmoid: bool, threshold: float, dtype: str, arch: int) -> PluginLaunch:
    B, NQ, HM, WM = mask_shape
    C, HF, WF = (_static(d, "feature size") for d in dense_shape[1:])
    NQ, HM, WM = _static(NQ, "queries"), _static(HM, "mask height"), _static(WM, "mask width")
    KN = text_shape[0]
    compiled, meta = _launch("mask_average_logits_plugin", "mask_average_logits_plugin", arch, dtype, {
        "NQ": NQ, "C": C, "HF": HF, "WF": WF, "HM": HM, "WM": WM, "THRESHOLD": float(threshold), "SIGMOID": bool(sigmoid),
        "SCALE": float(logit_scale), "DOT_PRECISION": dot_precision(dtype),
    })
    return PluginLaunch(compiled, (cdiv(NQ, meta["BLOCK_Q"]), cdiv(KN, meta["BLOCK_K"]), B), 32 * meta["_num_warps"], [KN])


_REGISTERED: List[Dict[str, Any]] = []


def register_plugins() -> List[Dict[str, Any]]:
    """Register the three plugins with TensorRT (once per process). Returns the records of the PTX the
    build compiled so far (filled in as TensorRT calls the AOT implementations), for the manifest."""
    if _REGISTERED:
        return _REGISTERED
    import numpy as np
    import tensorrt.plugin as trtp
    import triton

    target = triton.runtime.driver.active.get_current_target()
    arch = int(target.arch)
    dtypes = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

    def dtype_of(desc) -> str:
        return dtypes[np.dtype(desc.dtype).name] if desc.dtype != trtp.DataType.BF16 else "bf16"

    def aot(plugin: str, launch: PluginLaunch, outputs):
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = launch.grid
        params.block_x = launch.threads
        params.shared_mem = launch.kernel.shared_bytes
        extra = trtp.SymIntExprs(len(launch.extra_args))
        for i, value in enumerate(launch.extra_args):
            extra[i] = trtp.SymInt32(value)
        _REGISTERED.append({"plugin": plugin, "kernel": launch.kernel.entry, "arch": arch, "dtype": launch.kernel.dtype, "ptx_sha256": launch.kernel.sha256})
        return launch.kernel.entry, launch.kernel.ptx, params, extra

    io = "FP32|FP16"

    @trtp.register("fisa_rt::AdapterAttention")
    def adapter_attention_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("fisa_rt::AdapterAttention")
    def adapter_attention_tune(q, k, v, outputs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 4), "LINEAR")]

    @trtp.aot_impl("fisa_rt::AdapterAttention")
    def adapter_attention_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int):
        return aot("AdapterAttention", adapter_attention_launch(q.shape_expr, k.shape_expr, dtype_of(q), arch), outputs)

    @trtp.register("fisa_rt::MaskAttention")
    def mask_attention_desc(q: trtp.TensorDesc, k_img: trtp.TensorDesc, v_img: trtp.TensorDesc, k_self: trtp.TensorDesc, v_self: trtp.TensorDesc,
                            mask_logits: trtp.TensorDesc, grid_h: int, grid_w: int, threshold: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("fisa_rt::MaskAttention")
    def mask_attention_tune(q, k_img, v_img, k_self, v_self, mask_logits, outputs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 7), "LINEAR")]

    @trtp.aot_impl("fisa_rt::MaskAttention")
    def mask_attention_aot(q: trtp.TensorDesc, k_img: trtp.TensorDesc, v_img: trtp.TensorDesc, k_self: trtp.TensorDesc, v_self: trtp.TensorDesc,
                           mask_logits: trtp.TensorDesc, grid_h: int, grid_w: int, threshold: float, outputs: Tuple[trtp.TensorDesc], tactic: int):
        launch = mask_attention_launch(q.shape_expr, k_img.shape_expr, mask_logits.shape_expr, (grid_h, grid_w), threshold, dtype_of(q), arch)
        return aot("MaskAttention", launch, outputs)

    @trtp.register("fisa_rt::MaskAverageLogits")
    def mask_average_desc(mask_logits: trtp.TensorDesc, dense: trtp.TensorDesc, text: trtp.TensorDesc,
                          logit_scale: float, sigmoid: int, threshold: float) -> trtp.TensorDesc:
        out = dense.like()
        out.shape_expr = [mask_logits.shape_expr[0], mask_logits.shape_expr[1], text.shape_expr[0]]
        return out

    @trtp.autotune("fisa_rt::MaskAverageLogits")
    def mask_average_tune(mask_logits, dense, text, outputs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 4), "LINEAR")]

    @trtp.aot_impl("fisa_rt::MaskAverageLogits")
    def mask_average_aot(mask_logits: trtp.TensorDesc, dense: trtp.TensorDesc, text: trtp.TensorDesc, logit_scale: float, sigmoid: int,
                         threshold: float, outputs: Tuple[trtp.TensorDesc], tactic: int):
        launch = mask_average_logits_launch(mask_logits.shape_expr, dense.shape_expr, text.shape_expr, logit_scale, bool(sigmoid), threshold, dtype_of(dense), arch)
        return aot("MaskAverageLogits", launch, outputs)

    _REGISTERED.append({"registered": list(PLUGINS), "arch": arch})
    return _REGISTERED


__all__ = ["PLUGINS", "PluginLaunch", "adapter_attention_launch", "mask_attention_launch", "mask_average_logits_launch", "register_plugins"]
