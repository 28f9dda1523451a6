"""The static performance gate (python -m fisa_rt.kernels.gate): every config of every kernel, compiled on
this GPU-less machine and read by ptxas -v, fits shared memory, does not spill, loads memory-bound data with
vector instructions or cp.async, and the deterministic backward has no atomics. A config that fails is
removed from kernels/tuning.py, not skipped here.

sm_87 and sm_90 are compiled here in full (30-50 s); the other targets (B200, Thor, RTX 50, sm_80/86/89, ...)
through the committed report benchmarks/results/ptxas-gate.json, which must cover every config of the
working tree's lists and carry its fingerprint (kernel sources, Triton, targets, configs), or the test says
how to regenerate it (tens of minutes of CPU cold; docs/design.md)."""

import json
import os
import subprocess
import sys

import pytest
import triton

from fisa_rt.kernels import gate
from fisa_rt.kernels.aot import KERNELS, compile_specs
from fisa_rt.kernels.gate import ARCHES, CI_ARCHES, SHARED_LIMIT, ptx_counts

REPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "benchmarks", "results", "ptxas-gate.json")
REGENERATE = "python -m fisa_rt.kernels.gate --report benchmarks/results/ptxas-gate.md (unset TRITON_INTERPRET)"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "gate.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    arches = [flag for arch in CI_ARCHES for flag in ("--arch", str(arch))]
    result = subprocess.run(
        [sys.executable, "-m", "fisa_rt.kernels.gate", *arches, "--json", str(out)], env=env, capture_output=True,
        text=True,
    )
    assert out.exists(), result.stderr[-3000:]
    return json.loads(out.read_text())["records"]


def _failures(records):
    return [f"sm_{r['arch']} {r['kernel']} {r['config']}: {'; '.join(r['failures'])}" for r in records if r["failures"]]


def test_every_tuned_config_is_gated(records):
    for arch in CI_ARCHES:
        for kernel in (k for k in KERNELS if not k.endswith("_plugin")):
            gated = [r for r in records if r["kernel"] == kernel and r["arch"] == arch]
            assert len(gated) == len(compile_specs(kernel, arch)) > 0, (kernel, arch)


def test_pytorch_path_kernels_pass_the_gate(records):
    failures = _failures(r for r in records if not r["kernel"].endswith("_plugin"))
    assert not failures, "remove these configs from kernels/tuning.py:\n" + "\n".join(failures)
    for r in records:
        assert 0 <= r["shared_bytes"] <= SHARED_LIMIT[r["arch"]] and r["spill_bytes"] == 0 and r["registers"] <= 255


def test_plugin_kernels_fit_and_do_not_spill(records):
    plugins = [r for r in records if r["kernel"].endswith("_plugin")]
    assert {r["kernel"] for r in plugins} == {k for k in KERNELS if k.endswith("_plugin")}
    assert not [r for r in plugins if r["spill_bytes"] or r["shared_bytes"] > SHARED_LIMIT[r["arch"]]]


def test_plugin_kernels_load_with_vector_instructions(records):
    assert not _failures(r for r in records if r["kernel"].endswith("_plugin"))


def test_ptx_counting_recognises_vector_async_and_atomic_instructions():
    ptx = """
        ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        ld.global.L1::evict_last.v2.b32 { %r5, %r6 }, [ %rd2 + 0 ];
        ld.global.b16 %rs1, [ %rd3 + 0 ];
        cp.async.cg.shared.global [ %r7 + 0 ], [ %rd4 + 0 ], 0x10, %r8;
        atom.global.gpu.acq_rel.add.f32 %f1, [ %rd5 + 0 ], %f2;
        red.global.gpu.add.f32 [ %rd6 + 0 ], %f3;
    """
    assert ptx_counts(ptx) == {"vector_loads": 2, "async_copies": 1, "atomics": 2}


@pytest.fixture(scope="module")
def report():
    with open(REPORT) as f:
        return json.load(f)


def test_the_committed_report_is_current_and_covers_every_target(report):
    # another Triton compiles other code (torch 2.11's 3.6 on the GPU image); CI's is README's and must match
    if report["triton"] != triton.__version__ and not os.environ.get("CI"):
        pytest.skip(f"the report was compiled by Triton {report['triton']}, this is {triton.__version__}")
    assert report["arches"] == list(ARCHES)
    assert report["fingerprint"] == gate.fingerprint(ARCHES), f"stale gate report: rerun {REGENERATE}"
    for arch in ARCHES:
        covered = sorted(gate.record_key(r) for r in report["records"] if r["arch"] == arch)
        assert covered == gate.gated_specs(arch), f"sm_{arch}: rerun {REGENERATE}"


def test_every_target_passes_the_gate_in_the_report(report):
    failures = _failures(report["records"])
    assert not failures, "remove these configs from kernels/tuning.py:\n" + "\n".join(failures)
    for r in report["records"]:
        assert r["shared_bytes"] <= SHARED_LIMIT[r["arch"]] and r["spill_bytes"] == 0 and r["registers"] <= 255
    markdown = open(REPORT.replace(".json", ".md")).read()
    assert report["fingerprint"][:16] in markdown  # the table a reader sees is the one checked here


def test_the_report_is_written_where_asked_and_nowhere_else(tmp_path, monkeypatch):
    """write_report writes exactly the .md and the .json it is given (it once wrote over Triton's ptxas)."""
    from fisa_rt.kernels import targets

    record = gate.GateRecord("cosine_logits", 90, {"BLOCK_M": 64, "_num_warps": 4}, 96, 0, 24576, 0, 18, 0)
    ptxas = targets.ptxas_path(targets.target(90))
    before = os.path.getsize(ptxas)
    monkeypatch.setattr(gate, "fingerprint", lambda arches: "f" * 64)
    gate.write_report(str(tmp_path / "gate.md"), [record], (90,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.json", "gate.md"]
    assert "| cosine_logits | BLOCK_M=64, num_warps=4 | sm_90 | 96 | 0 | 24576 | 0 | 18 | ok |" in (
        tmp_path / "gate.md").read_text()
    assert os.path.getsize(ptxas) == before
