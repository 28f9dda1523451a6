"""Every Triton kernel compiles to PTX for Jetson Orin (sm_87) and H100 (sm_90) on this GPU-less machine:
what the TensorRT plugins embed (python -m fisa_rt.kernels.aot)."""

import json
import os
import subprocess
import sys

import pytest

from fisa_rt.kernels.aot import KERNELS, compile_kernel


def test_all_kernels_compile_to_ptx_for_orin_and_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "ptx"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fisa_rt.kernels.aot",
            "--arch",
            "87",
            "--arch",
            "90",
            "--dtype",
            "fp16",
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    index = json.loads((out / "index.json").read_text())
    assert sorted((r["kernel"], r["arch"]) for r in index) == sorted(
        (k, a) for k in KERNELS if not k.endswith("_plugin") for a in (87, 90)
    )
    for record in index:
        ptx = (out / record["file"]).read_text()
        target = "sm_90a" if record["arch"] == 90 else "sm_87"
        assert f".target {target}" in ptx, record["file"]
        assert f".entry {record['entry']}(" in ptx
        assert record["entry"] == KERNELS[record["kernel"]][1]
        # Orin has 164 KB of shared memory per block at most, H100 227 KB: the tuned configs must fit
        assert 0 <= record["shared_bytes"] <= (164 if record["arch"] == 87 else 227) * 1024
        assert "fp16" in record["file"] and len(record["sha256"]) == 64


def test_interpreted_kernels_are_refused_with_a_clear_message():
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("kernels are compiled, not interpreted, in this process")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        compile_kernel("cosine_logits", 90)


def test_unknown_kernel_and_dtype_are_rejected():
    with pytest.raises(ValueError, match="unknown kernel"):
        compile_kernel("softmax", 90)
    with pytest.raises(ValueError, match="dtype"):
        compile_kernel("cosine_logits", 90, dtype="int8")
