"""The compute-capability table (fisa_rt.kernels.targets) and what the tuning does with a GPU it does not know."""

import re
import subprocess
import sys
import warnings

import pytest

from fisa_rt.kernels import targets, tuning


def test_the_table_knows_every_current_nvidia_target():
    names = {arch: row.name for arch, row in targets.TARGETS.items()}
    assert "Orin" in names[87] and "H100" in names[90] and "B200" in names[100] and "RTX 50" in names[120]
    assert "GB10" in names[121] and "Thor" in names[101] and "Thor" in names[110]
    # Thor is one GPU under two names: 10.1 before CUDA 13, 11.0 from CUDA 13 (JetPack 7)
    assert targets.TARGETS[101].cuda == "12.8-12.9" and targets.TARGETS[110].cuda == "13.0+"
    assert targets.RENAMED[101] == 110 and targets.TARGETS[101].generation == targets.TARGETS[110].generation
    assert targets.describe((11, 0)) == "compute capability 11.0 (Jetson Thor (JetPack 7))"
    assert targets.describe((13, 0)) == "compute capability 13.0 (not in fisa-rt's table)"


def test_shared_memory_and_ptxas_per_target():
    # opt-in per-block limits (CCCL arch_traits.h: per-SM capacity minus 1 KB reserved per block)
    kb = {arch: row.shared_per_block // 1024 for arch, row in targets.TARGETS.items()}
    assert kb == {80: 163, 86: 99, 87: 163, 89: 99, 90: 227, 100: 227, 101: 227, 103: 227, 110: 227, 120: 99, 121: 99}
    # Triton 3.8's ptxas-blackwell (CUDA 13.3) no longer knows sm_101: that one alone uses the CUDA 12.9 ptxas
    assert [a for a, row in targets.TARGETS.items() if row.legacy_ptxas] == [101]
    assert targets.TARGETS[90].gpu_name == "sm_90a" and targets.TARGETS[87].gpu_name == "sm_87"
    assert targets.TARGETS[110].ptx_isa == 90  # CUDA 13.0, JetPack 7's
    with pytest.raises(targets.UnknownTarget, match="sm_130 is not a target"):
        targets.target(130)


def test_the_ptx_isa_is_the_tables_whichever_ptxas_triton_bundles(tmp_path, monkeypatch):
    """Triton 3.9 assembles sm_90 with CUDA 13.4's ptxas, whose own ISA 9.4 only CUDA 13.4 drivers JIT: the PTX
    still declares the table's 8.8. A ptxas older than that (Triton 3.6's CUDA 12.8) declares its own 8.7."""
    def ptxas(release):
        path = tmp_path / f"ptxas-{release}"
        path.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.1"\n')
        path.chmod(0o755)
        return str(path)

    for release, isa in (("13.4", {90: 88, 87: 88, 100: 86, 110: 90}), ("12.8", {90: 87, 87: 87, 100: 86})):
        monkeypatch.setattr(targets, "ptxas_path", lambda row, path=ptxas(release): path)
        assert {arch: targets.declared_isa(targets.target(arch)) for arch in isa} == isa, release
    from triton.backends.nvidia.compiler import ptx_get_version

    releases = [f"{major}.{minor}" for major in (11, 12, 13, 14) for minor in range(10)]
    assert [targets.isa_of_cuda(r) for r in releases] == [ptx_get_version(r) for r in releases]
    first = {84: "12.4", 85: "12.5", 87: "12.8", 88: "12.9", 90: "13.0", 94: "13.4"}
    assert {isa: targets.cuda_of_isa(isa) for isa in first} == first
    # sm_80-90: CUDA 12.9's ISA; Blackwell: the ISA of the first CUDA that knew the GPU
    assert {row.ptx_isa for arch, row in targets.TARGETS.items() if arch <= 90} == {88}
    assert all(86 <= row.ptx_isa <= 90 for row in targets.TARGETS.values())


def test_every_generation_is_tuned_and_sized_for_its_chips():
    generations = {row.generation for row in targets.TARGETS.values()}
    for name, per_generation in tuning.TUNING.items():
        assert generations <= set(per_generation), name
    # 99 KB chips (sm_86/89/120) never get the 128 x 128 tiles of the 227 KB ones
    for gen in (80, 120):
        assert all(c.kwargs.get("BLOCK_C", 0) * c.kwargs.get("BLOCK_Q", 0) < 128 * 128
                   for c in tuning.TUNING["mask_pool_fwd"][gen])
    assert tuning.generation_of(110) == tuning.generation_of(101) == 110 and tuning.generation_of(121) == 120


def test_a_gpu_newer_than_every_list_falls_back_with_one_warning(monkeypatch):
    torch = pytest.importorskip("torch")
    assert tuning.generation_of(130) == tuning.FALLBACK_GENERATION == 80
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (13, 0))
    monkeypatch.setattr(tuning, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="compute capability 13.0 has no tuned kernel configs; using the sm_80"):
        assert tuning.generation(torch.device("cuda")) == 80
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.generation(torch.device("cuda")) == 80  # said once
    assert tuning.configs_for("cosine_logits", tuning.generation_of(130))  # something to run, never a KeyError


def test_a_target_the_installed_ptxas_does_not_know_is_refused_in_one_line(old_ptxas_blackwell, tmp_path):
    """Every compile for the target stops before Triton's (whose ptxas would say "Value 'sm_110a' is not
    defined" from deep inside), and the two tools say so in one line before compiling or writing anything."""
    message = rf"ptxas \({old_ptxas_blackwell}\) cannot assemble sm_110a for Jetson Thor \(JetPack 7\): use a Triton"
    with pytest.raises(targets.TritonTooOld, match=message):
        with targets.ptxas_for(targets.target(110)):
            pytest.fail("entered the compile of a target the ptxas does not know")
    with targets.ptxas_for(targets.target(100)):  # the targets it knows still compile
        pass
    out = tmp_path / "ptx"
    for tool in (["fisa_rt.kernels.aot", "--out", str(out)], ["fisa_rt.kernels.gate", "--json", str(out) + ".json"]):
        run = subprocess.run([sys.executable, "-m", *tool, "--arch", "90", "--arch", "110"], capture_output=True,
                             text=True)
        assert run.returncode == 2 and not run.stdout, (tool, run.stdout, run.stderr[-2000:])
        assert len(run.stderr.splitlines()) == 1 and re.search(f"error: .*{message}", run.stderr), run.stderr
    assert list(tmp_path.iterdir()) == [old_ptxas_blackwell]
