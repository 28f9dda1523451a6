"""The fused kernels as TensorRT "quickly deployable" Python plugins (``tensorrt.plugin``, TensorRT >= 10.9).

Each plugin has two implementations of one kernel launch:

* ``aot_impl`` returns Triton-compiled PTX plus its launch parameters, so the engine embeds the kernel
  and runs with no Python on the device. What the engine build uses (``tensorrt_builder.network_flags``
  sets PREFER_AOT_PYTHON_PLUGINS: with both implementations registered, tensorrt.plugin refuses to pick
  one without a preference, tensorrt/plugin/_lib.py, ``_TemplatePluginCreator.create_plugin``).
* ``impl`` (JIT) launches the same Triton kernel with the same constants from Python through torch, for
  TensorRT calls that create the plugin without a quick-plugin creation request (docs/design.md).

The TensorRT-free half of each plugin - which kernel, which compile-time constants, which grid and which
scalar arguments for given tensor shapes - is a plain function here (``*_launch``) that returns a
``PluginLaunch``; tests run it without TensorRT or a GPU (``tests/test_plugins.py``), ONNX Runtime runs
it in Triton's interpreter (``fused_ort.py``), and ``register_plugins`` only wraps it in
``tensorrt.plugin``'s decorators.

Calling convention (TensorRT's, for AOT kernels): ``kernel(inputs..., extra_args..., outputs...)``.
Node <-> plugin contract (``kernels/onnx_ops.py``): ``fisa_rt::AdapterAttention(q, k, v)``,
``fisa_rt::MaskAttention(q, k_img, v_img, k_self, v_self, mask_logits; grid_h, grid_w, threshold)``,
``fisa_rt::MaskPool(mask_logits, dense; sigmoid, threshold)`` -> (B, Q, C) area-normalised.
"""

# No `from __future__ import annotations`: tensorrt.plugin validates the decorated functions' annotations
# as classes (tensorrt/plugin/_validate.py), and postponed annotations would be strings.
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from fisa_rt.errors import InputError
from fisa_rt.kernels import targets
from fisa_rt.kernels.aot import CompiledKernel, KernelSpec, compile_spec, make_spec
from fisa_rt.kernels.tuning import block_d, configs_for, dot_precision, generation_of

LOG2E = 1.4426950408889634
PLUGINS = ("AdapterAttention", "MaskAttention", "MaskPool")


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
    from fisa_rt.kernels.aot import PLUGIN_POINTER_ALIGNMENT

    bad = [p for p in pointers if p % PLUGIN_POINTER_ALIGNMENT]
    if bad:
        raise ValueError(f"{what}: buffers must be {PLUGIN_POINTER_ALIGNMENT}-byte aligned; got addresses {bad}")


def launch_jit(launch: PluginLaunch, inputs: Sequence, outputs: Sequence) -> None:
    """Run the launch's kernel through Triton's JIT (or its interpreter) on torch tensors, with exactly
    the parameters and constants the AOT PTX takes: inputs, extra_args, outputs."""
    import importlib

    from fisa_rt.kernels.aot import KERNELS

    module, name = KERNELS[launch.spec.kernel]
    kernel = getattr(importlib.import_module(f"fisa_rt.kernels.{module}"), name)
    tensors = list(inputs) + list(outputs)
    if any(not t.is_contiguous() for t in tensors):
        raise ValueError(f"{launch.spec.kernel}: the plugin kernels take contiguous tensors")
    check_alignment([t.data_ptr() for t in tensors], launch.spec.kernel)
    grid = tuple(int(g) for g in launch.grid)
    kernel[grid](*inputs, *(int(a) for a in launch.extra_args), *outputs, **dict(launch.spec.constants),
                 num_warps=launch.spec.num_warps, num_stages=launch.spec.num_stages)


def plugin_arch(capability: Sequence[int]) -> int:
    """The compute capability x10 whose PTX a fused engine built on this GPU embeds: the GPU's own. Triton
    emits architecture-specific PTX (``.target sm_XYa``), which the driver JIT-compiles for that exact GPU
    only, so there is no "nearest" target to fall back to. Jetson Thor reports 10.1 under CUDA 12.8-12.9
    and 11.0 under CUDA 13 (JetPack 7): each gets PTX for the name its driver knows (targets.py)."""
    arch = targets.arch_of(capability)
    if arch not in targets.TARGETS:
        raise InputError(
            f"the fused flavour embeds PTX gated for {', '.join(f'sm_{a}' for a in targets.TARGETS)}; this GPU is "
            f"{targets.describe(capability)}: build the portable flavour (--flavour portable), which TensorRT "
            "compiles for any GPU it supports"
        )
    return arch


def ptx_record(arch: int) -> Dict[str, Any]:
    """What the manifest records about the embedded PTX's target."""
    row = targets.target(arch)
    return {"arch": f"sm_{arch}", "gpu": row.name, "ptx_isa": None if row.ptx_isa is None else row.ptx_isa / 10}


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
                            grid_h: int, grid_w: int, threshold: float) -> Desc:
        return q.like()

    @trtp.autotune("fisa_rt::MaskAttention")
    def mask_attention_tune(q: Desc, k_img: Desc, v_img: Desc, k_self: Desc, v_self: Desc, mask_logits: Desc,
                            outputs: Descs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 7), "LINEAR")]

    @trtp.aot_impl("fisa_rt::MaskAttention")
    def mask_attention_aot(q: Desc, k_img: Desc, v_img: Desc, k_self: Desc, v_self: Desc, mask_logits: Desc,
                           grid_h: int, grid_w: int, threshold: float, outputs: Descs, tactic: int) -> AOT:
        shapes = (q.shape_expr, k_img.shape_expr, mask_logits.shape_expr)
        launch = mask_attention_launch(*shapes, (grid_h, grid_w), threshold, dtypes[q.dtype], arch)
        return aot("MaskAttention", launch)

    @trtp.impl("fisa_rt::MaskAttention")
    def mask_attention_jit(q: Tensor, k_img: Tensor, v_img: Tensor, k_self: Tensor, v_self: Tensor, mask_logits: Tensor,
                           grid_h: int, grid_w: int, threshold: float, outputs: Tensors, stream: int) -> None:
        shapes = (shape(q), shape(k_img), shape(mask_logits))
        launch = mask_attention_launch(*shapes, (grid_h, grid_w), threshold, dtypes[q.dtype], arch)
        jit(launch, (q, k_img, v_img, k_self, v_self, mask_logits), outputs, stream)

    @trtp.register("fisa_rt::MaskPool")
    def mask_pool_desc(mask_logits: Desc, dense: Desc, sigmoid: int, threshold: float) -> Desc:
        out = dense.like()
        out.shape_expr = [mask_logits.shape_expr[0], mask_logits.shape_expr[1], dense.shape_expr[1]]
        return out

    @trtp.autotune("fisa_rt::MaskPool")
    def mask_pool_tune(mask_logits: Desc, dense: Desc, outputs: Descs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([io] * 3), "LINEAR")]

    @trtp.aot_impl("fisa_rt::MaskPool")
    def mask_pool_aot(mask_logits: Desc, dense: Desc, sigmoid: int, threshold: float, outputs: Descs,
                      tactic: int) -> AOT:
        dtype = dtypes[dense.dtype]
        launch = mask_pool_launch(mask_logits.shape_expr, dense.shape_expr, bool(sigmoid), threshold, dtype, arch)
        return aot("MaskPool", launch)

    @trtp.impl("fisa_rt::MaskPool")
    def mask_pool_jit(mask_logits: Tensor, dense: Tensor, sigmoid: int, threshold: float, outputs: Tensors,
                      stream: int) -> None:
        launch = mask_pool_launch(shape(mask_logits), shape(dense), bool(sigmoid), threshold, dtypes[dense.dtype], arch)
        jit(launch, (mask_logits, dense), outputs, stream)

    _REGISTERED.append({"registered": list(PLUGINS), "arch": arch})
    return _REGISTERED


__all__ = ["PLUGINS", "PluginLaunch", "adapter_attention_launch", "mask_attention_launch", "mask_pool_launch",
           "plugin_arch", "ptx_record", "register_plugins"]
