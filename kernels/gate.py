"""Static performance gate: every kernel config compiled for every target in ``targets.py`` (Orin, H100,
B200, Thor, RTX 50, and the sm_80/86/89 the Orin lists serve), read by ptxas.

A GPU is rarely at hand, so what can be checked without one is checked on every CI run, per config:
- shared memory within the architecture's per-block limit (a config over it cannot launch);
- no register spills (local-memory traffic in the inner loop);
- vectorised global loads or ``cp.async`` copies in the memory-bound kernels (scalar 2-byte loads cap a
  kernel at a fraction of HBM bandwidth);
- no atomics where the backward promises deterministic results.

    python -m fisa_rt.kernels.gate --json gate.json      # one record per (kernel, config, arch); exit 1 on failures
    python -m fisa_rt.kernels.gate --report benchmarks/results/ptxas-gate.md   # every target; + .json beside it

CI (tests/kernels/test_static_gate.py) runs sm_87 and sm_90 in full and checks that the committed report
covers every other target's configs and was made from the current kernels (``fingerprint``).

The PyTorch-path kernels are compiled with the specialisation Triton's JIT gives them at the model's shapes
(``aot.UNIT_STRIDES``, ``aot.MULTIPLE_OF_16_SIZES``); the TensorRT plugin kernels through the launch specs
``export/plugins.py`` builds engines with, at fisa-vit-b16's 640 px shapes. Must run without
``TRITON_INTERPRET`` (tests/kernels/test_static_gate.py runs it in a subprocess).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from . import targets

# Largest shared memory one block may use (opt-in), bytes: targets.py. sm_87 is held to 99 KB (sm_86/89's
# limit; Orin's is 163 KB) because its configs also serve generation 80.
SHARED_LIMIT = {a: 99 * 1024 if a == 87 else t.shared_per_block for a, t in targets.TARGETS.items()}
ARCHES = targets.gated_arches()
CI_ARCHES = (87, 90)  # compiled in full by every CI run; the others through the committed report
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
    row = targets.target(arch)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        result = subprocess.run(
            [targets.ptxas_path(row), "-v", f"--gpu-name={row.gpu_name}", path, "-o",
             os.path.join(folder, "kernel.cubin")],
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


def run_gate(kernels: Optional[List[str]] = None, arches: Sequence[int] = ARCHES,
             on_record: Callable[[GateRecord], None] = lambda r: None,
             reuse: Optional[Dict[tuple, GateRecord]] = None) -> List[GateRecord]:
    from . import aot

    reuse = reuse or {}
    records = []
    seen = set()  # (kernel, config, arch): compiled once per run
    for arch in arches:
        for kernel in kernels or [k for k in aot.KERNELS if not k.endswith("_plugin")]:
            for constants in aot.compile_specs(kernel, arch):
                key = (kernel, _config_key(constants), arch)
                if key in seen:
                    continue
                seen.add(key)
                if key not in reuse:
                    compiled = aot.compile_kernel(kernel, arch, "fp16", dict(constants))
                    reuse[key] = check(kernel, arch, constants, compiled.ptx, compiled.shared_bytes)
                records.append(reuse[key])
                on_record(records[-1])
        if kernels is None:
            for record in _plugin_records(arch, reuse):
                records.append(record)
                on_record(record)
    return records


def gated_specs(arch: int) -> List[str]:
    """Every (kernel, config) the gate compiles for ``arch``, as sorted keys: what a report must cover."""
    from . import aot, plugin_launches

    keys = {f"{kernel} {_config_key(c)}" for kernel in aot.KERNELS if not kernel.endswith("_plugin")
            for c in aot.compile_specs(kernel, arch)}
    for launch in plugin_launches.example_launches(arch).values():
        config = {**dict(launch.spec.constants), "_num_warps": launch.spec.num_warps}
        keys.add(f"{launch.spec.kernel} {_config_key(config)}")
    return sorted(keys)


def record_key(record: Dict[str, object]) -> str:
    return f"{record['kernel']} {_config_key(record['config'])}"


def sources_digest() -> str:
    """What one record depends on beyond its (kernel, config, target): Triton's version, the kernels' and the
    compiler driver's sources, and the target rows (ptxas, PTX ISA, shared-memory limit)."""
    import triton

    from . import aot

    digest = hashlib.sha256(triton.__version__.encode())
    for name in sorted({m for m, _ in aot.KERNELS.values()} | {"aot"}):
        module = aot if name == "aot" else importlib.import_module(f"fisa_rt.kernels.{name}")
        with open(module.__file__, "rb") as f:  # wherever the module lives (kernels/ may get sub-folders)
            digest.update(f.read())
    digest.update(repr(sorted(targets.TARGETS.items())).encode())
    return digest.hexdigest()


def fingerprint(arches: Sequence[int] = ARCHES) -> str:
    """What a gate report depends on: ``sources_digest`` and every config compiled per target. A report
    whose fingerprint differs from the working tree's is stale."""
    digest = hashlib.sha256(sources_digest().encode())
    for arch in arches:
        digest.update(repr((arch, gated_specs(arch))).encode())
    return digest.hexdigest()


def reusable_records(path: str) -> Dict[tuple, GateRecord]:
    """Records of an earlier report made from the same sources (``sources_digest``), by (kernel, config, arch):
    a record depends on nothing else, so a rerun after a list change compiles only the new configs."""
    with open(path) as f:
        data = json.load(f)
    if data.get("sources") != sources_digest():
        return {}
    return {(r["kernel"], _config_key(r["config"]), r["arch"]): GateRecord(**r) for r in data["records"]}


def write_report(path: str, records: List[GateRecord], arches: Sequence[int]) -> None:
    """``path`` (markdown: registers, spills, shared memory per kernel x config x target) and the same
    records as JSON beside it, with the fingerprint the CI test compares."""
    import triton
    from triton.knobs import NvidiaTool

    data = {"fingerprint": fingerprint(arches), "sources": sources_digest(), "triton": triton.__version__,
            "arches": list(arches), "records": [asdict(r) for r in records]}
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(data, f, indent=1, default=str)
    lines = [
        "# ptxas gate: every kernel config x target",
        "",
        f"`python -m fisa_rt.kernels.gate --report {path}` (Triton {triton.__version__}, fp16; no GPU needed).",
        "Registers, spill bytes and shared memory from `ptxas -v` / Triton's metadata; vec = vector global loads,",
        "cp.async = async copies in the PTX. Fingerprint `" + data["fingerprint"][:16] + "`.",
        "",
        "| target | ptxas / PTX ISA | shared limit |",
        "|---|---|---|",
    ]
    for arch in arches:
        row = targets.target(arch)
        ptxas = targets.ptxas_path(row)
        isa = targets.declared_isa(row)
        tool = f"{os.path.basename(ptxas)} (CUDA {NvidiaTool.from_path(ptxas).version})"
        limit = SHARED_LIMIT[arch] // 1024
        lines.append(f"| {row.gpu_name} {row.name} | {tool}, ISA {isa // 10}.{isa % 10} | {limit} KB |")
    lines += ["", "| kernel | config | target | regs | spill B | shared B | vec | cp.async | result |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r.kernel, _config_key(r.config), r.arch)):
        blocks = ", ".join(f"{k.strip('_')}={v}" for k, v in sorted(r.config.items())
                           if k.startswith(("BLOCK", "_num")))
        result = "FAIL: " + "; ".join(r.failures) if r.failures else "ok"
        lines.append(f"| {r.kernel} | {blocks} | sm_{r.arch} | {r.registers} | {r.spill_bytes} | {r.shared_bytes} "
                     f"| {r.vector_loads} | {r.async_copies} | {result} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _plugin_records(arch: int, reuse: Dict[tuple, GateRecord]) -> List[GateRecord]:
    """The TensorRT plugin kernels as the engine build compiles them (plugin_launches.example_launches: ViT-B/16
    at 640 px and FC-CLIP's ConvNeXt-L head), with the pointer alignment their launchers check."""
    from . import plugin_launches

    records = []
    for launch in plugin_launches.example_launches(arch).values():
        config = {**dict(launch.spec.constants), "_num_warps": launch.spec.num_warps}
        key = (launch.spec.kernel, _config_key(config), arch)
        if key not in reuse:
            compiled = launch.compile()
            reuse[key] = check(compiled.kernel, arch, config, compiled.ptx, compiled.shared_bytes)
        records.append(reuse[key])
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Compile every kernel config for every target (kernels/targets.py) and check it with ptxas -v."
    )
    parser.add_argument(
        "--kernel", action="append", help="only these PyTorch-path kernels (default: all, plugins included)"
    )
    parser.add_argument("--arch", type=int, action="append", choices=ARCHES, help="only these targets (default: all)")
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--report", help="write a markdown report here (and its JSON beside it); needs all kernels")
    parser.add_argument("--reuse", action="append", default=[],
                        help="an earlier --json/--report JSON whose records of unchanged sources are not recompiled")
    args = parser.parse_args(argv)
    if args.report and args.kernel:
        parser.error("--report covers every kernel; drop --kernel")
    arches = tuple(args.arch or ARCHES)
    targets.exit_unless_assembled(parser, arches)

    def show(r: GateRecord) -> None:
        blocks = {k: v for k, v in r.config.items() if k.startswith("BLOCK") or k.startswith("_num")}
        status = "FAIL " + "; ".join(r.failures) if r.failures else "ok"
        print(f"sm_{r.arch} {r.kernel:28s} {json.dumps(blocks):80s} regs {r.registers:3d} spill {r.spill_bytes:5d} "
              f"smem {r.shared_bytes:6d} vec {r.vector_loads:3d} cp.async {r.async_copies:3d}  {status}", flush=True)

    reuse = {key: record for path in args.reuse for key, record in reusable_records(path).items()}
    records = run_gate(args.kernel, arches, on_record=show, reuse=reuse)
    if args.report:
        write_report(args.report, records, arches)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sources": sources_digest(), "records": [asdict(r) for r in records]}, f, indent=1, default=str)
    return 1 if any(r.failures for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
