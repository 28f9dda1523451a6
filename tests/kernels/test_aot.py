"""Every Triton kernel compiles to PTX for Jetson Orin (sm_87) and H100 (sm_90) on this GPU-less machine:
what the TensorRT plugins embed (python -m fisa_rt.kernels.aot)."""

import json
import os
import subprocess
import sys

import pytest

from fisa_rt.kernels.aot import KERNELS, compile_kernel
from fisa_rt.kernels.targets import TARGETS, declared_isa


def _compile_all(out, arches, dtype):
    """index.json of ``python -m fisa_rt.kernels.aot`` run in a process that compiles (no interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    flags = [flag for arch in arches for flag in ("--arch", str(arch))]
    subprocess.run([sys.executable, "-m", "fisa_rt.kernels.aot", *flags, "--dtype", dtype, "--out", str(out)],
                   check=True, env=env, capture_output=True, text=True)
    return json.loads((out / "index.json").read_text())


def test_all_kernels_compile_to_ptx_for_orin_and_hopper(tmp_path):
    out = tmp_path / "ptx"
    index = _compile_all(out, (87, 90), "fp16")
    assert sorted((r["kernel"], r["arch"]) for r in index) == sorted(
        (k, a) for k in KERNELS if not k.endswith("_plugin") for a in (87, 90)
    )
    for record in index:
        ptx = (out / record["file"]).read_text()
        target = "sm_90a" if record["arch"] == 90 else "sm_87"
        assert f".target {target}" in ptx, record["file"]
        isa = declared_isa(TARGETS[record["arch"]])
        assert f"\n.version {isa // 10}.{isa % 10}\n" in ptx, record["file"]  # the table's, not Triton's ptxas's
        assert f".entry {record['entry']}(" in ptx
        assert record["entry"] == KERNELS[record["kernel"]][1]
        # Orin has 164 KB of shared memory per block at most, H100 227 KB: the tuned configs must fit
        assert 0 <= record["shared_bytes"] <= (164 if record["arch"] == 87 else 227) * 1024
        assert "fp16" in record["file"] and len(record["sha256"]) == 64


def test_the_ptx_declares_the_isa_the_target_table_asks_for():
    """Not the one of Triton's ptxas (which Triton 3.9 raised to 9.4 for sm_90): a table asking for 8.5 gets 8.5."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = ("from fisa_rt.kernels import aot, targets; targets.declared_isa = lambda row: 85; "
              "print(aot.compile_kernel('cosine_logits', 90).ptx)")
    ptx = subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True, text=True).stdout
    assert "\n.version 8.5\n" in ptx and "\n.target sm_90a\n" in ptx


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_pytorch_paths_other_dtypes_compile_too(tmp_path, dtype):
    """fp32 and bf16 kernels compile for Hopper: the first H200 run found mask_pool_fwd in fp32 aborting
    Triton's compiler (OptimizeThreadLocality), which the interpreter cannot see."""
    index = _compile_all(tmp_path, (90,), dtype)
    assert sorted(r["kernel"] for r in index) == sorted(k for k in KERNELS if not k.endswith("_plugin"))


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


def test_the_command_line_refuses_a_plugin_kernel_in_one_line(tmp_path):
    """A plugin kernel takes its model's sizes (build_engine.py compiles it): ``--kernel mask_pool_plugin`` was
    offered, then failed with a KeyError traceback."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fisa_rt.kernels.aot", "--arch", "90", "--kernel", "mask_pool_plugin",
                           "--out", str(tmp_path / "ptx")], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'mask_pool_plugin'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "ptx").exists()
