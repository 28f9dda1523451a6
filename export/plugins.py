"""The fused kernels as TensorRT "quickly deployable" Python plugins (``tensorrt.plugin``, TensorRT >= 10.9).

Each plugin has two implementations of one kernel launch:

* ``aot_impl`` returns Triton-compiled PTX plus its launch parameters, so the engine embeds the kernel
  and runs with no Python on the device. What the engine build uses (``tensorrt_builder.network_flags``
  sets PREFER_AOT_PYTHON_PLUGINS: with both implementations registered, tensorrt.plugin refuses to pick
  one without a preference, tensorrt/plugin/_lib.py, ``_TemplatePluginCreator.create_plugin``).
* ``impl`` (JIT) launches the same Triton kernel with the same constants from Python through torch, for
  TensorRT calls that create the plugin without a quick-plugin creation request (docs/design.md).

The TensorRT-free half of each plugin - which kernel, which compile-time constants, which grid and which
scalar arguments for given tensor shapes - is a plain function of ``fisa_rt.kernels.plugin_launches``
(``*_launch``) that returns a ``PluginLaunch``; tests run it without TensorRT or a GPU
(``tests/test_plugins.py``), ONNX Runtime runs it in Triton's interpreter (``fused_onnxruntime.py``), and
``register_plugins`` only wraps it in ``tensorrt.plugin``'s decorators.

Calling convention (TensorRT's, for AOT kernels): ``kernel(inputs..., extra_args..., outputs...)``.
Node <-> plugin contract (``kernels/onnx_ops.py``): ``fisa_rt::AdapterAttention(q, k, v)``,
``fisa_rt::MaskAttention(q, k_img, v_img, k_self, v_self, mask_logits; grid_h, grid_w, threshold)``,
``fisa_rt::MaskPool(mask_logits, dense; sigmoid, threshold)`` -> (B, Q, C) area-normalised.
"""

# No `from __future__ import annotations`: tensorrt.plugin validates the decorated functions' annotations
# as classes (tensorrt/plugin/_validate.py), and postponed annotations would be strings.
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from fisa_rt.errors import InputError, MissingDependencyError
from fisa_rt.kernels import targets
from fisa_rt.kernels.plugin_launches import (
    PluginLaunch,
    adapter_attention_launch,
    launch_jit,
    mask_attention_launch,
    mask_pool_launch,
)

from .driver import check_driver_reads

PLUGINS = ("AdapterAttention", "MaskAttention", "MaskPool")


def plugin_arch(capability: Sequence[int], driver: Optional[str] = None) -> int:
    """The compute capability x10 whose PTX a fused engine built on this GPU embeds: the GPU's own. Triton
    emits architecture-specific PTX (``.target sm_XYa``), which the driver JIT-compiles for that exact GPU
    only, so there is no "nearest" target to fall back to. Jetson Thor reports 10.1 under CUDA 12.8-12.9
    and 11.0 under CUDA 13 (JetPack 7): each gets PTX for the name its driver knows (targets.py).
    ``driver``: the CUDA release of the driver that will JIT the PTX (a build's; None checks nothing)."""
    arch = targets.arch_of(capability)
    if arch not in targets.TARGETS:
        raise InputError(
            f"the fused flavour embeds PTX gated for {', '.join(f'sm_{a}' for a in targets.TARGETS)}; this GPU is "
            f"{targets.describe(capability)}: build the portable flavour (--flavour portable), which TensorRT "
            "compiles for any GPU it supports"
        )
    row = targets.target(arch)
    try:
        targets.check_assembles(row)  # here, not from inside TensorRT's build
    except targets.TritonTooOld as exc:
        raise MissingDependencyError(f"{exc}, or build the portable flavour (--flavour portable)") from None
    if driver is not None:
        check_driver_reads(targets.declared_isa(row), f"the fused engine for {row.gpu_name}", driver)
    return arch


def ptx_record(arch: int) -> Dict[str, Any]:
    """What the manifest records about the embedded PTX's target."""
    row = targets.target(arch)
    return {"arch": f"sm_{arch}", "gpu": row.name, "ptx_isa": targets.declared_isa(row) / 10}


_REGISTERED: List[Dict[str, Any]] = []


def register_plugins(arch: Optional[int] = None) -> List[Dict[str, Any]]:
    """Register the three plugins with TensorRT (once per process) for ``arch`` (compute capability x10;
    default: this GPU's). Returns the records of the PTX the build compiled so far (filled in as TensorRT
    calls the AOT implementations), for the manifest."""
    if _REGISTERED:
        return _REGISTERED
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if arch is None:
        import torch

        arch = plugin_arch(torch.cuda.get_device_capability())
    # descriptors carry a tensorrt.DataType (tensorrt/plugin/_tensor.py, TensorDesc.dtype)
    dtypes = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}
    AOT = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]
    # the classes tensorrt.plugin validates annotations against (short names keep the signatures readable)
    Desc, Tensor = trtp.TensorDesc, trtp.Tensor
    Descs, Tensors = Tuple[Desc], Tuple[Tensor]
    # Scalar attributes are one-element arrays: TensorRT 10.x's plugin code turns a field into an `int`/`float`
    # attribute with int(array), which NumPy >= 2.4 refuses; array attributes get the same field types (INT64,
    # FLOAT64, as `int`/`float` do) and are converted with astype by every version.
    Int, Float = npt.NDArray[np.int64], npt.NDArray[np.float64]

    def aot(plugin: str, launch: PluginLaunch) -> AOT:
        compiled = launch.compile()
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = launch.grid
        params.block_x = launch.threads
        params.shared_mem = compiled.shared_bytes
        extra = trtp.SymIntExprs(len(launch.extra_args))
        for i, value in enumerate(launch.extra_args):
            extra[i] = trtp.SymInt32(value)
        _REGISTERED.append({"plugin": plugin, "kernel": compiled.entry, "arch": arch, "dtype": compiled.dtype,
                            "ptx_sha256": compiled.sha256})
        return compiled.entry, compiled.ptx, params, extra

    def jit(launch: PluginLaunch, inputs, outputs, stream: int) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            launch_jit(launch, [torch.as_tensor(t, device="cuda") for t in inputs],
                       [torch.as_tensor(t, device="cuda") for t in outputs])

    def shape(tensor) -> Tuple[int, ...]:
        return tuple(tensor.shape)

    def grid(grid_h, grid_w) -> Tuple[int, int]:
        return int(grid_h[0]), int(grid_w[0])

    io = "FP32|FP16"

    @trtp.register("fisa_rt::AdapterAttention")
    def adapter_attention_desc(q: Desc, k: Desc, v: Desc) -> Desc:
        return q.like()

    @trtp.autotune("fisa_rt::AdapterAttention")
    def adapter_attention_tune(q: Desc, k: Desc, v: Desc, outputs: Descs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 4), "LINEAR")]

    @trtp.aot_impl("fisa_rt::AdapterAttention")
    def adapter_attention_aot(q: Desc, k: Desc, v: Desc, outputs: Descs, tactic: int) -> AOT:
        return aot("AdapterAttention", adapter_attention_launch(q.shape_expr, k.shape_expr, dtypes[q.dtype], arch))

    @trtp.impl("fisa_rt::AdapterAttention")
    def adapter_attention_jit(q: Tensor, k: Tensor, v: Tensor, outputs: Tensors, stream: int) -> None:
        jit(adapter_attention_launch(shape(q), shape(k), dtypes[q.dtype], arch), (q, k, v), outputs, stream)

    @trtp.register("fisa_rt::MaskAttention")
    def mask_attention_desc(q: Desc, k_img: Desc, v_img: Desc, k_self: Desc, v_self: Desc, mask_logits: Desc,
                            grid_h: Int, grid_w: Int, threshold: Float) -> Desc:
        return q.like()

    @trtp.autotune("fisa_rt::MaskAttention")
    def mask_attention_tune(q: Desc, k_img: Desc, v_img: Desc, k_self: Desc, v_self: Desc, mask_logits: Desc,
                            outputs: Descs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 7), "LINEAR")]

    @trtp.aot_impl("fisa_rt::MaskAttention")
    def mask_attention_aot(q: Desc, k_img: Desc, v_img: Desc, k_self: Desc, v_self: Desc, mask_logits: Desc,
                           grid_h: Int, grid_w: Int, threshold: Float, outputs: Descs, tactic: int) -> AOT:
        shapes = (q.shape_expr, k_img.shape_expr, mask_logits.shape_expr)
        launch = mask_attention_launch(*shapes, grid(grid_h, grid_w), float(threshold[0]), dtypes[q.dtype], arch)
        return aot("MaskAttention", launch)

    @trtp.impl("fisa_rt::MaskAttention")
    def mask_attention_jit(q: Tensor, k_img: Tensor, v_img: Tensor, k_self: Tensor, v_self: Tensor, mask_logits: Tensor,
                           grid_h: Int, grid_w: Int, threshold: Float, outputs: Tensors, stream: int) -> None:
        shapes = (shape(q), shape(k_img), shape(mask_logits))
        launch = mask_attention_launch(*shapes, grid(grid_h, grid_w), float(threshold[0]), dtypes[q.dtype], arch)
        jit(launch, (q, k_img, v_img, k_self, v_self, mask_logits), outputs, stream)

    @trtp.register("fisa_rt::MaskPool")
    def mask_pool_desc(mask_logits: Desc, dense: Desc, sigmoid: Int, threshold: Float) -> Desc:
        out = dense.like()
        out.shape_expr = [mask_logits.shape_expr[0], mask_logits.shape_expr[1], dense.shape_expr[1]]
        return out

    @trtp.autotune("fisa_rt::MaskPool")
    def mask_pool_tune(mask_logits: Desc, dense: Desc, outputs: Descs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 3), "LINEAR")]

    @trtp.aot_impl("fisa_rt::MaskPool")
    def mask_pool_aot(mask_logits: Desc, dense: Desc, sigmoid: Int, threshold: Float, outputs: Descs,
                      tactic: int) -> AOT:
        dtype, flags = dtypes[dense.dtype], (bool(sigmoid[0]), float(threshold[0]))
        launch = mask_pool_launch(mask_logits.shape_expr, dense.shape_expr, *flags, dtype, arch)
        return aot("MaskPool", launch)

    @trtp.impl("fisa_rt::MaskPool")
    def mask_pool_jit(mask_logits: Tensor, dense: Tensor, sigmoid: Int, threshold: Float, outputs: Tensors,
                      stream: int) -> None:
        flags = (bool(sigmoid[0]), float(threshold[0]))
        launch = mask_pool_launch(shape(mask_logits), shape(dense), *flags, dtypes[dense.dtype], arch)
        jit(launch, (mask_logits, dense), outputs, stream)

    _REGISTERED.append({"registered": list(PLUGINS), "arch": arch})
    return _REGISTERED


__all__ = ["PLUGINS", "plugin_arch", "ptx_record", "register_plugins"]
