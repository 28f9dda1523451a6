"""TensorRT plugins, up to the point TensorRT takes over: the launch each plugin's aot_impl returns (PTX
entry with exactly TensorRT's parameters, grid, scalars) and the plugin kernels' results."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import triton

from fisa_rt.kernels import adapter_attention_reference, mask_attention_reference

# Orin and H100, and the Blackwell targets whose PTX differs in kind: Thor under CUDA 12 (CUDA 12.9 ptxas)
# and CUDA 13 (ptxas-blackwell, PTX ISA 9.0), RTX 50 (99 KB of shared memory, PTX ISA 8.7)
ARCHES = (87, 90, 101, 110, 120)
LAUNCHES = r"""
import json, sys
from fisa_rt.kernels.plugin_launches import example_launches
out = []
for arch in ARCHES:
    for name, launch in example_launches(arch, "fp16").items():
        k = launch.compile()
        out.append({"name": name, "arch": arch, "entry": k.entry, "ptx": k.ptx, "grid": [int(g) for g in launch.grid],
                    "threads": launch.threads, "extra": launch.extra_args, "shared": k.shared_bytes,
                    "inputs": launch.inputs, "outputs": launch.outputs,
                    "block_c": dict(launch.spec.constants).get("BLOCK_C")})
json.dump(out, sys.stdout)
"""
# (inputs, scalars, outputs) of each plugin kernel in TensorRT's order
LAYOUT = {"AdapterAttention": (3, 2, 1), "MaskAttention": (6, 1, 1), "MaskPool": (2, 0, 1)}


@pytest.fixture(scope="module")
def launches():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = LAUNCHES.replace("ARCHES", repr(ARCHES))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_plugin_ptx_entries_take_exactly_tensorrts_parameters(launches):
    from fisa_rt.kernels.aot import entry_params

    from fisa_rt.kernels.targets import TARGETS

    assert len(launches) == 3 * len(ARCHES)
    for launch in launches:
        inputs, scalars, outputs = LAYOUT[launch["name"]]
        params = entry_params(launch["ptx"], launch["entry"])
        # TensorRT passes inputs, extra_args and outputs, nothing else: Triton's two scratch pointers are gone
        assert len(params) == inputs + scalars + outputs, (launch["name"], params)
        expected = ["u64 .ptr"] * inputs + [".u32"] * scalars + ["u64 .ptr"] * outputs
        for param, kind in zip(params, expected):
            assert kind in param, (launch["name"], params)
        assert (launch["inputs"], len(launch["extra"]), launch["outputs"]) == (inputs, scalars, outputs)
        assert launch["threads"] % 32 == 0
        assert 0 < launch["shared"] <= TARGETS[launch["arch"]].shared_per_block
        assert f".target {TARGETS[launch['arch']].gpu_name}\n" in launch["ptx"]
    adapter = next(x for x in launches if x["name"] == "AdapterAttention")
    # one program per block of 64 or 128 visual tokens (the tuned sizes), one per (image, head)
    assert adapter["extra"] == [1600, 1203] and adapter["grid"][1] == 24 and adapter["grid"][0] in (13, 25)
    pool = next(x for x in launches if x["name"] == "MaskPool")
    # pool-only: one program per (block of masks, 64-128 channels, image); no class dimension
    assert pool["block_c"] >= 64 and pool["grid"][1] == 768 // pool["block_c"] and pool["grid"][2] == 2


def test_the_fused_build_embeds_ptx_for_the_gpu_it_runs_on(launches):
    """Each GPU gets PTX for its own name and an ISA its oldest driver reads: Thor is sm_101a (ISA 8.6) under
    CUDA 12.8-12.9 and sm_110a (ISA 9.0, CUDA 13 / JetPack 7); a GPU newer than the table is refused with
    the portable flavour as the way out, before any TensorRT build."""
    from fisa_rt.errors import InputError
    from fisa_rt.export.plugins import plugin_arch, ptx_record

    assert plugin_arch((11, 0)) == 110 and plugin_arch((10, 1)) == 101 and plugin_arch((8, 7)) == 87
    assert ptx_record(110) == {"arch": "sm_110", "gpu": "Jetson Thor (JetPack 7)", "ptx_isa": 9.0}
    with pytest.raises(InputError, match=r"this GPU is compute capability 13.0 .*--flavour portable"):
        plugin_arch((13, 0))
    with pytest.raises(InputError, match="7.5"):
        plugin_arch((7, 5))
    versions = {(x["arch"], re.search(r"^\.version (\S+)", x["ptx"], re.M).group(1)) for x in launches}
    assert versions == {(87, "8.8"), (90, "8.8"), (101, "8.6"), (110, "9.0"), (120, "8.7")}


def test_a_target_the_installed_ptxas_does_not_know_is_refused_before_the_build(old_ptxas_blackwell, monkeypatch):
    """On Thor under JetPack 7 with Triton 3.6 the fused build says which Triton to use, instead of ptxas's
    error from inside Triton's compiler, inside TensorRT's build."""
    from fisa_rt.errors import MissingDependencyError
    from fisa_rt.export.plugins import plugin_arch
    from fisa_rt.kernels import targets

    with pytest.raises(MissingDependencyError, match=rf"Triton {re.escape(triton.__version__)}'s ptxas "
                       rf"\({old_ptxas_blackwell}\) cannot assemble sm_110a for Jetson Thor \(JetPack 7\): use a "
                       r"Triton .*3\.8 or newer.*, or build the portable flavour \(--flavour portable\)$"):
        plugin_arch((11, 0))
    assert plugin_arch((10, 0)) == 100 and plugin_arch((12, 0)) == 120
    monkeypatch.delenv("TRITON_PTXAS_BLACKWELL_PATH")
    assert plugin_arch((11, 0)) == 110  # README's Triton assembles every row of the table
    # a help text it cannot read (another ptxas's format) refuses nothing: Triton's compile is the judge
    monkeypatch.setattr(targets, "ptxas_path", lambda row: "/bin/true")
    assert plugin_arch((11, 0)) == 110


def test_a_driver_too_old_for_the_ptx_is_refused_before_the_build():
    """The driver JIT-compiles the engine's PTX: the build names one that reads an older ISA before TensorRT fails
    on it (sm_90's PTX is ISA 8.8 under Triton 3.8 and newer, 8.7 under 3.6; Thor's 9.0). An engine's load checks
    its manifest's ISA instead (tests/test_cli_runtime.py), so plugin_arch without a driver checks nothing."""
    from fisa_rt.errors import MissingDependencyError
    from fisa_rt.export.driver import check_driver_reads
    from fisa_rt.export.plugins import plugin_arch

    with pytest.raises(MissingDependencyError, match=r"^the fused engine for sm_90a embeds PTX ISA 8\.[78], which "
                       r"this NVIDIA driver \(CUDA 12\.0\) cannot compile: install a driver for CUDA 12\.[89] or "
                       r"newer, or build the portable flavour \(--flavour portable\)$"):
        plugin_arch((9, 0), driver="12.0")
    assert plugin_arch((9, 0), driver="12.9") == plugin_arch((9, 0)) == 90
    with pytest.raises(MissingDependencyError, match=r"^Thor's embeds PTX ISA 9\.0, .*CUDA 13\.0 or newer"):
        check_driver_reads(90, "Thor's", "12.9")
    check_driver_reads(90, "Thor's", "13.0")
    check_driver_reads(90, "Thor's", None)  # no driver found: nothing to say


def test_the_driver_version_is_read_from_libcuda(monkeypatch):
    from fisa_rt.export import driver

    class LibCuda:
        def __init__(self, version, status=0):
            self.version, self.status = version, status

        def cuDriverGetVersion(self, out):
            out._obj.value = self.version
            return self.status

    monkeypatch.setattr(driver.ctypes, "CDLL", lambda name: LibCuda(12090))
    assert driver.driver_cuda() == "12.9"
    monkeypatch.setattr(driver.ctypes, "CDLL", lambda name: LibCuda(13010))
    assert driver.driver_cuda() == "13.1"
    monkeypatch.setattr(driver.ctypes, "CDLL", lambda name: LibCuda(0, status=100))  # CUDA_ERROR_NO_DEVICE
    assert driver.driver_cuda() is None

    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(driver.ctypes, "CDLL", no_driver)
    assert driver.driver_cuda() is None


def test_plugin_ptx_assembles_with_ptxas(launches, tmp_path):
    """The entry rewrite leaves valid PTX: ptxas (shipped in the triton wheel) assembles it."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path
    for launch in launches:
        if launch["arch"] != 90:
            continue
        path = tmp_path / f"{launch['name']}.ptx"
        path.write_text(launch["ptx"])
        command = [ptxas, "-arch=sm_90a", str(path), "-o", str(tmp_path / "out.cubin")]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, (launch["name"], result.stderr[-2000:])


def test_exact_entry_refuses_kernels_that_use_scratch():
    from fisa_rt.kernels.aot import exact_entry

    params = ",\n\t".join(f".param .u64 .ptr .global .align 1 k_param_{i}" for i in range(3))
    ptx = f".visible .entry k(\n\t{params}\n)\n{{\n\tld.param.b64 %rd1, [k_param_0];\n}}"
    assert "k_param_1" not in exact_entry(ptx, "k", 1, (0, 0)).split("{")[0]
    with pytest.raises(RuntimeError, match="scratch memory"):
        exact_entry(ptx, "k", 1, (64, 0))
    with pytest.raises(RuntimeError, match="reads its scratch"):
        exact_entry(ptx.replace("k_param_0]", "k_param_2]"), "k", 1, (0, 0))


def test_launch_needs_static_head_and_image_sizes():
    from fisa_rt.kernels.plugin_launches import mask_attention_launch

    class Symbolic:
        is_constant = False

    with pytest.raises(ValueError, match="fixed when the engine is built"):
        mask_attention_launch((1, Symbolic(), 10, 16), (1, 2, 16, 16), (1, 10, 8, 8), (4, 4), 0.0, "fp16", 90)
    with pytest.raises(ValueError, match="tokens"):
        mask_attention_launch((1, 2, 10, 16), (1, 2, 15, 16), (1, 10, 8, 8), (4, 4), 0.0, "fp16", 90)


@pytest.fixture
def plugin_kernels():
    if torch.cuda.is_available():
        pytest.skip("interpreter check; on a GPU the engine build exercises the PTX")
    from fisa_rt.kernels import plugin_kernels_triton

    return plugin_kernels_triton


def test_adapter_plugin_kernel_matches_reference(plugin_kernels):
    B, H, N, K, D = 2, 2, 20, 5, 16
    q = torch.randn(B, H, N, D)
    k, v = torch.randn(1, H, K, D), torch.randn(1, H, K, D)
    out = torch.full_like(q, float("nan"))
    plugin_kernels.adapter_attention_plugin_kernel[(triton.cdiv(N, 16), B * H)](
        q,
        k,
        v,
        N,
        K,
        out,
        H=H,
        D=D,
        QK_SCALE=D**-0.5 * math.log2(math.e),
        DOT_PRECISION="ieee",
        BLOCK_D=16,
        BLOCK_N=16,
        BLOCK_K=16,
    )
    torch.testing.assert_close(out, adapter_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)


# 0.7: past zero, so a kernel that compares with 0 whatever the threshold (as the model's own 0.0 would hide) fails
@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_mask_attention_plugin_kernel_matches_reference(plugin_kernels, threshold):
    B, H, Q, grid, D, mask = 2, 2, 5, (4, 4), 16, (8, 8)
    q, ks, vs = (torch.randn(B, H, Q, D) for _ in range(3))
    k, v = (torch.randn(B, H, 16, D) for _ in range(2))
    masks = torch.randn(B, Q, *mask) + 0.3
    out = torch.full_like(q, float("nan"))
    plugin_kernels.mask_attention_plugin_kernel[(1, B * H)](
        q, k, v, ks, vs, masks, B, out, H=H, NQ=Q, GH=4, GW=4, D=D, HM=8, WM=8, THRESHOLD=threshold,
        QK_SCALE=D ** -0.5 * math.log2(math.e), DOT_PRECISION="ieee", BLOCK_D=16, BLOCK_Q=16, BLOCK_N=16,
    )
    expected = mask_attention_reference(q, k, v, ks, vs, masks, grid, threshold)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sigmoid, threshold", [(False, 0.0), (False, 0.7), (True, 0.0)])
def test_mask_pool_plugin_kernel_matches_reference(plugin_kernels, sigmoid, threshold):
    from fisa_rt.kernels.mask_pooling import mask_pool_reference

    B, Q, C = 2, 6, 40
    masks = torch.randn(B, Q, 10, 10) + 0.2
    masks[:, 0] = -5.0  # an empty mask pools to zero
    dense = torch.randn(B, C, 5, 5)
    out = torch.full((B, Q, C), float("nan"))
    # BLOCK_C = 32 < C: two channel tiles, each sampling the masks once
    plugin_kernels.mask_pool_plugin_kernel[(1, 2, B)](
        masks, dense, out, NQ=Q, C=C, HF=5, WF=5, HM=10, WM=10, THRESHOLD=threshold, SIGMOID=sigmoid,
        DOT_PRECISION="ieee", BLOCK_Q=16, BLOCK_C=32, BLOCK_HW=32,
    )
    expected = mask_pool_reference(masks, dense, "sigmoid" if sigmoid else "binary", threshold)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_jit_launch_refuses_buffers_the_aligned_ptx_cannot_take(plugin_kernels):
    """The plugin kernels are compiled for 16-byte aligned pointers; the JIT/ONNX Runtime launcher checks."""
    from fisa_rt.kernels.plugin_launches import launch_jit, mask_pool_launch

    launch = mask_pool_launch((1, 4, 8, 8), (1, 16, 4, 4), False, 0.0, "fp32", 90)
    masks, dense = torch.randn(1, 4, 8, 8), torch.randn(1, 16, 4, 4)
    shifted = torch.empty(1 + 4 * 16)[1:].view(1, 4, 16)  # 4 bytes past an aligned allocation
    with pytest.raises(ValueError, match="16-byte aligned"):
        launch_jit(launch, [masks, dense], [shifted])
    out = torch.full((1, 4, 16), float("nan"))
    launch_jit(launch, [masks, dense], [out])
    from fisa_rt.kernels.mask_pooling import mask_pool_reference

    torch.testing.assert_close(out, mask_pool_reference(masks, dense), rtol=1e-5, atol=1e-5)
