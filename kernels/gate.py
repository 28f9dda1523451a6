"""Static performance gate: every kernel config compiled for Orin (sm_87) and H100 (sm_90), read by ptxas.

A GPU is rarely at hand, so what can be checked without one is checked on every CI run, per config:
- shared memory within the architecture's per-block limit (a config over it cannot launch);
- no register spills (local-memory traffic in the inner loop);
- vectorised global loads or ``cp.async`` copies in the memory-bound kernels (scalar 2-byte loads cap a
  kernel at a fraction of HBM bandwidth);
- no atomics where the backward promises deterministic results.

    python -m fisa_rt.kernels.gate --json gate.json      # one record per (kernel, config, arch); exit 1 on failures

The PyTorch-path kernels are compiled with the specialisation Triton's JIT gives them at the model's shapes
(``aot.UNIT_STRIDES``, ``aot.MULTIPLE_OF_16_SIZES``); the TensorRT plugin kernels through the launch specs
``export/plugins.py`` builds engines with, at fisa-vit-b16's 640 px shapes. Must run without
``TRITON_INTERPRET`` (tests/kernels/test_static_gate.py runs it in a subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

# Largest shared memory one block may use (opt-in), bytes: CUDA C programming guide, compute capabilities.
# sm_87 is held to 99 KB (sm_86/89's limit; Orin's is 163 KB) because its configs also serve generation 80.
SHARED_LIMIT = {87: 99 * 1024, 90: 227 * 1024}
ARCHES = (87, 90)
# Kernels bound by memory traffic: their main loop must load with vector instructions or cp.async.
MEMORY_BOUND = {
    "adapter_attention_fwd", "mask_attention_sparse_fwd", "mask_attention_combine", "mask_pool_fwd", "mask_pool_bwd",
    "cosine_logits", "adapter_attention_plugin", "mask_pool_plugin",
}
# Backward kernels that must not use atomics (deterministic gradients).
DETERMINISTIC = {"adapter_attention_bwd", "adapter_attention_bwd_kv"}


@dataclass
class GateRecord:
    kernel: str
    arch: int
    config: Dict[str, object]
    registers: int
    spill_bytes: int
    shared_bytes: int
    vector_loads: int
    async_copies: int
    atomics: int
    failures: List[str] = field(default_factory=list)


def ptxas_usage(ptx: str, arch: int) -> Dict[str, int]:
    """Registers and spill bytes that ``ptxas -v`` reports for ``ptx`` (Triton's bundled ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        result = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(folder, "kernel.cubin")],
            capture_output=True, text=True, check=True,
        )
    log = result.stderr + result.stdout
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return {"registers": int(registers.group(1)), "spill_bytes": int(spills.group(1)) + int(spills.group(2))}


def ptx_counts(ptx: str) -> Dict[str, int]:
    """Vector global loads, async copies and atomics in ``ptx``."""
    return {
        "vector_loads": len(re.findall(r"\bld\.global(?:\.[\w:]+)*?\.v[248]\.", ptx)),
        "async_copies": len(re.findall(r"\bcp\.async\.(?:ca|cg)\.", ptx)),
        "atomics": len(re.findall(r"\b(?:atom|red)\.global\.", ptx)),
    }


def check(kernel: str, arch: int, config: Dict[str, object], ptx: str, shared: int) -> GateRecord:
    record = GateRecord(kernel, arch, config, shared_bytes=shared, **ptxas_usage(ptx, arch), **ptx_counts(ptx))
    if shared > SHARED_LIMIT[arch]:
        record.failures.append(f"{shared} B shared > {SHARED_LIMIT[arch]} B limit")
    if record.spill_bytes:
        record.failures.append(f"{record.spill_bytes} B of register spills")
    if kernel in MEMORY_BOUND and not (record.vector_loads or record.async_copies):
        record.failures.append("no vector loads or cp.async in a memory-bound kernel")
    if kernel in DETERMINISTIC and record.atomics:
        record.failures.append(f"{record.atomics} atomics in a deterministic kernel")
    return record


def _config_key(constants: Dict[str, object]) -> str:
    return json.dumps({k: v for k, v in sorted(constants.items())}, default=str)


def run_gate(kernels: Optional[List[str]] = None, arches=ARCHES) -> List[GateRecord]:
    from . import aot

    records = []
    seen = set()  # (kernel, config, arch): compiled once per run
    for arch in arches:
        for kernel in kernels or [k for k in aot.KERNELS if not k.endswith("_plugin")]:
            for constants in aot.compile_specs(kernel, arch):
                key = (kernel, _config_key(constants), arch)
                if key in seen:
                    continue
                seen.add(key)
                compiled = aot.compile_kernel(kernel, arch, "fp16", dict(constants))
                records.append(check(kernel, arch, constants, compiled.ptx, compiled.shared_bytes))
        if kernels is None:
            records += _plugin_records(arch)
    return records


def _plugin_records(arch: int) -> List[GateRecord]:
    """The TensorRT plugin kernels as the engine build compiles them (plugin_launches.example_launches: ViT-B/16
    at 640 px and FC-CLIP's ConvNeXt-L head), with the pointer alignment their launchers check."""
    from . import plugin_launches

    records = []
    for launch in plugin_launches.example_launches(arch).values():
        compiled = launch.compile()
        config = {**compiled.constants, "_num_warps": compiled.num_warps}
        records.append(check(compiled.kernel, arch, config, compiled.ptx, compiled.shared_bytes))
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Compile every kernel config for sm_87/sm_90 and check it with ptxas -v."
    )
    parser.add_argument(
        "--kernel", action="append", help="only these PyTorch-path kernels (default: all, plugins included)"
    )
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args(argv)
    records = run_gate(args.kernel)
    for r in records:
        blocks = {k: v for k, v in r.config.items() if k.startswith("BLOCK") or k.startswith("_num")}
        status = "FAIL " + "; ".join(r.failures) if r.failures else "ok"
        print(f"sm_{r.arch} {r.kernel:28s} {json.dumps(blocks):80s} regs {r.registers:3d} spill {r.spill_bytes:5d} "
              f"smem {r.shared_bytes:6d} vec {r.vector_loads:3d} cp.async {r.async_copies:3d}  {status}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in records], f, indent=1, default=str)
    return 1 if any(r.failures for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
