"""TensorRT plugins, up to the point TensorRT takes over: the launch each plugin's aot_impl returns (PTX
entry, parameter order of TensorRT's calling convention, grid, scalars) and the plugin kernels' results."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import triton

from fisa_rt.kernels import adapter_attention_reference, mask_attention_reference, mask_average_logits_reference

LAUNCHES = r"""
import json, re, sys
from fisa_rt.export.plugins import adapter_attention_launch, mask_attention_launch, mask_average_logits_launch
out = []
for arch in (87, 90):
    for name, launch in (
        ("adapter", adapter_attention_launch((2, 12, 1600, 64), (1, 12, 133, 64), "fp16", arch)),
        ("mask", mask_attention_launch((2, 12, 100, 64), (2, 12, 1600, 64), (2, 100, 160, 160), (40, 40), 0.0, "fp16", arch)),
        ("pool", mask_average_logits_launch((2, 250, 256, 256), (2, 768, 32, 32), (1203, 768), 50.0, False, 0.0, "fp16", arch)),
    ):
        k = launch.kernel
        out.append({"name": name, "arch": arch, "entry": k.entry, "ptx": k.ptx, "grid": list(launch.grid),
                    "threads": launch.threads, "extra": launch.extra_args, "shared": k.shared_bytes})
json.dump(out, sys.stdout)
"""
# (inputs, scalars, outputs) of each plugin kernel in TensorRT's order
LAYOUT = {"adapter": (3, 2, 1), "mask": (6, 1, 1), "pool": (3, 1, 1)}


def _params(ptx: str, entry: str):
    body = re.search(rf"\.entry {entry}\((.*?)\)", ptx, re.S).group(1)
    return [p.strip() for p in body.split(",")]


def test_plugin_launches_follow_tensorrts_calling_convention():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", LAUNCHES], capture_output=True, text=True, env=env, check=True)
    launches = json.loads(result.stdout)
    assert len(launches) == 6
    for launch in launches:
        inputs, scalars, outputs = LAYOUT[launch["name"]]
        params = _params(launch["ptx"], launch["entry"])
        expected = ["u64 .ptr"] * inputs + [".u32"] * scalars + ["u64 .ptr"] * outputs
        for param, kind in zip(params, expected):
            assert kind in param, (launch["name"], params)
        # Triton appends its scratch pointers; the kernels must never read them, since TensorRT passes
        # only inputs, scalars and outputs.
        for index in range(len(expected), len(params)):
            assert "ptr" in params[index] and f"{launch['entry']}_param_{index}]" not in launch["ptx"]
        assert len(launch["extra"]) == scalars and launch["threads"] % 32 == 0
        assert 0 < launch["shared"] <= (164 if launch["arch"] == 87 else 227) * 1024
        assert f".target sm_{launch['arch']}" in launch["ptx"]
    adapter = next(x for x in launches if x["name"] == "adapter")
    # one program per block of 64 or 128 visual tokens (the tuned sizes), one per (image, head)
    assert adapter["extra"] == [1600, 133] and adapter["grid"][1] == 24 and adapter["grid"][0] in (13, 25)


def test_launch_needs_static_head_and_image_sizes():
    from fisa_rt.export.plugins import mask_attention_launch

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
        q, k, v, N, K, out, H=H, D=D, QK_SCALE=D ** -0.5 * math.log2(math.e), DOT_PRECISION="ieee", BLOCK_D=16, BLOCK_N=16, BLOCK_K=16
    )
    torch.testing.assert_close(out, adapter_attention_reference(q, k, v), rtol=1e-5, atol=1e-5)


def test_mask_attention_plugin_kernel_matches_reference(plugin_kernels):
    B, H, Q, grid, D, mask = 2, 2, 5, (4, 4), 16, (8, 8)
    q, ks, vs = (torch.randn(B, H, Q, D) for _ in range(3))
    k, v = (torch.randn(B, H, 16, D) for _ in range(2))
    masks = torch.randn(B, Q, *mask) + 0.3
    out = torch.full_like(q, float("nan"))
    plugin_kernels.mask_attention_plugin_kernel[(1, B * H)](
        q, k, v, ks, vs, masks, B, out, H=H, NQ=Q, GH=4, GW=4, D=D, HM=8, WM=8, THRESHOLD=0.0,
        QK_SCALE=D ** -0.5 * math.log2(math.e), DOT_PRECISION="ieee", BLOCK_D=16, BLOCK_Q=16, BLOCK_N=16,
    )
    torch.testing.assert_close(out, mask_attention_reference(q, k, v, ks, vs, masks, grid, 0.0), rtol=1e-4, atol=1e-5)


def test_mask_average_plugin_kernel_matches_reference(plugin_kernels):
    B, Q, C, K = 2, 6, 40, 7
    masks = torch.randn(B, Q, 10, 10) + 0.2
    masks[:, 0] = -5.0  # an empty mask scores 0
    dense, text = torch.randn(B, C, 5, 5), torch.randn(K, C)
    out = torch.full((B, Q, K), float("nan"))
    plugin_kernels.mask_average_logits_plugin_kernel[(1, 1, B)](
        masks, dense, text, K, out, NQ=Q, C=C, HF=5, WF=5, HM=10, WM=10, THRESHOLD=0.0, SIGMOID=False, SCALE=20.0,
        DOT_PRECISION="ieee", BLOCK_Q=16, BLOCK_K=16, BLOCK_C=32, BLOCK_HW=32,
    )
    torch.testing.assert_close(out, mask_average_logits_reference(masks, dense, text, 20.0), rtol=1e-4, atol=1e-4)
