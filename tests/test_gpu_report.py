"""scripts/gpu-check.sh's Python half (benchmarks/gpu_report.py), as far as a machine without a GPU allows:
the report writer on recorded inputs, the peak arithmetic, the junit/benchmark parsing, and a clear refusal
of every GPU measurement (and of the script) where no GPU is visible."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.join(os.path.dirname(__file__), "..")
spec = importlib.util.spec_from_file_location("gpu_report", os.path.join(ROOT, "benchmarks", "gpu_report.py"))
gpu_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_report)

DEVICE = {"name": "NVIDIA H100 PCIe", "capability": "9.0", "sms": 114, "memory_gib": 79.6, "driver": "560.35.03",
          "cuda": "12.8",
          "versions": {"python": "3.11.9", "torch": "2.14.1", "triton": "3.8.0", "tensorrt": None}}
PEAKS = {"dram_bytes_per_s": 1.9e12, "tensor_flops_per_s": 610e12, "copy_bytes": 1 << 30, "gemm_n": 8192}
BENCH = {"benchmarks": [
    {"name": "test_adapter_attention[fwd-triton-vitb16-640-coco]",
     "extra_info": {"impl": "triton", "shape": "vitb16-640-coco fwd", "ms": 0.01, "tflops": 71.0, "gbps": 950.0}},
    {"name": "test_adapter_attention[fwd-eager-vitb16-640-coco]",
     "extra_info": {"impl": "eager", "shape": "vitb16-640-coco fwd", "ms": 0.05, "tflops": 14.2, "gbps": 190.0}},
    {"name": "test_backends[onnxruntime]", "extra_info": {"cosine": 0.99}},  # not a kernel row: ignored
]}
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites>
<testsuite name="pytest" errors="0" failures="1" skipped="2"
tests="10" time="12.3"></testsuite></testsuites>"""


def test_peaks_are_computed_from_the_timings():
    assert gpu_report.bandwidth(1 << 30, 1.0) == pytest.approx(2 * (1 << 30) / 1e-3)  # read + write
    assert gpu_report.gemm_flops(1000, 2.0) == pytest.approx(1e12)


def test_report_carries_device_driver_measured_peaks_and_speedups(tmp_path):
    junit = tmp_path / "k.xml"
    junit.write_text(JUNIT)
    tests = gpu_report.summarise_tests(str(junit))
    assert tests == {"tests": 10, "failures": 1, "errors": 0, "skipped": 2, "passed": 7}
    rows = gpu_report.kernel_rows(BENCH)
    assert [r["impl"] for r in rows] == ["triton", "eager"]
    e2e = [{"model": "fisa-vit-b16", "image": 640, "classes": 133, "backend": b, "ms": ms}
           for b, ms in (("reference", 30.0), ("triton", 20.0))]
    text = gpu_report.render(DEVICE, PEAKS, tests, rows, e2e, "2026-11-25", minutes=21.5)
    assert "NVIDIA H100 PCIe" in text and "driver 560.35.03" in text
    assert "triton 3.8.0" in text and "tensorrt" not in text
    assert "DRAM 1.90 TB/s" in text and "610 TFLOP/s" in text and "(21.5 min)" in text
    assert "7 passed, 1 failed" in text
    assert "| adapter_attention | vitb16-640-coco fwd | triton | 0.0100 | 71.0 | 950 | 50% | 5.00x |" in text
    assert "| fisa-vit-b16 | 640 | 133 | triton | 20.00 | 1.50x |" in text
    assert "torch.compile baselines left out" not in text
    short = gpu_report.render(DEVICE, PEAKS, tests, rows, e2e, "2026-11-25", minutes=7, without_compiled=True)
    assert "torch.compile baselines left out" in short


def test_profile_section_shows_launch_overhead_and_a_refused_capture():
    top = [{"kernel": "adapter_attention_fwd_kernel", "ms": 0.5, "calls": 2}]
    profiles = [{"model": "fisa-vit-b16", "image": 640, "classes": 133, "backend": "reference", "wall_ms": 14.3,
                 "kernel_ms": 6.1, "launches": 412, "graph_ms": 6.4, "graph_error": None, "top": top},
                {"model": "fisa-vit-b16", "image": 640, "classes": 133, "backend": "triton", "wall_ms": 17.8,
                 "kernel_ms": 5.2, "launches": 380, "graph_ms": None, "graph_error": "RuntimeError: sync", "top": top}]
    text = "\n".join(gpu_report.render_profiles(profiles))
    assert "| reference | 14.30 | 6.10 | 412 | 6.40 |" in text
    assert "| triton | 17.80 | 5.20 | 380 | not capturable: RuntimeError: sync |" in text
    assert text.count("| `adapter_attention_fwd_kernel` | 0.500 | 2 |") == 2


def test_write_names_the_report_by_date_and_gpu_and_never_overwrites(tmp_path, capsys):
    peaks = tmp_path / "peaks.json"
    peaks.write_text(json.dumps({"device": DEVICE, "peaks": PEAKS}))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH))
    args = ["write", "--peaks", str(peaks), "--bench", str(bench), "--out-dir", str(tmp_path / "results")]
    assert gpu_report.main(args) == 0
    (path,) = (tmp_path / "results").iterdir()
    assert path.name.endswith("-nvidia-h100-pcie.md") and "adapter_attention" in path.read_text()
    assert gpu_report.main(args) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_measurements_refuse_clearly_without_a_gpu(tmp_path, capsys):
    timing = lambda: gpu_report.time_ms(lambda: None)  # noqa: E731
    for measure in (gpu_report.measure_peaks, gpu_report.device_info, gpu_report.end_to_end, gpu_report.profile,
                    timing):
        with pytest.raises(gpu_report.GpuUnavailableError, match="needs a CUDA GPU"):
            measure()
    assert gpu_report.main(["peaks", "--json", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    script = os.path.join(ROOT, "scripts", "gpu-check.sh")
    result = subprocess.run(
        ["bash", script], capture_output=True, text=True, env={**os.environ, "FISA_PYTHON": sys.executable}
    )
    assert result.returncode == 2 and "no CUDA GPU visible" in result.stderr and "Traceback" not in result.stderr


def test_choice_section_shows_every_candidate_and_the_chosen_one():
    rows = [{"model": "fisa-vit-b16", "image": 640, "classes": 133, "key": "adapter_attention:float16:fwd:1,12,2048",
             "implementation": "sdpa-cudnn", "times_ms": {"triton": 0.12, "sdpa-cudnn": 0.04, "eager": 0.3},
             "failed": {"sdpa-flash": "RuntimeError: no"}}]
    text = "\n".join(gpu_report.render_choices(rows))
    assert ("| fisa-vit-b16 640 px, 133 classes | `adapter_attention:float16:fwd:1,12,2048` | sdpa-cudnn | "
            "**sdpa-cudnn 0.0400**, triton 0.1200, eager 0.3000 | sdpa-flash |") in text
    assert "Kernel choices of `auto`" in gpu_report.render(DEVICE, PEAKS, None, [], [], "2026-12-05", choices=rows)


def test_failed_steps_are_named_and_a_failed_peaks_step_loses_only_the_fractions():
    rows = gpu_report.kernel_rows(BENCH)
    text = gpu_report.render(DEVICE, None, None, rows, [], "2026-12-06", minutes=9.3,
                             failed=["peaks and device", "kernel tests"])
    assert "- peaks measured on this card: not measured" in text and "(9.3 min)" in text
    assert "**Failed or out of time, so missing or partial below: peaks and device, kernel tests.**" in text
    assert "| adapter_attention | vitb16-640-coco fwd | triton | 0.0100 | 71.0 | 950 |  | 5.00x |" in text
    assert "Failed or out of time" not in gpu_report.render(DEVICE, PEAKS, None, rows, [], "2026-12-06")


def test_the_gpu_check_script_gives_each_step_sigint_first_and_fits_nine_minutes():
    """pytest writes its junit and benchmark JSON on SIGINT, not on timeout's default SIGTERM; at
    FISA_GPU_CHECK_MINUTES=9 the steps' limits leave room for the installs in a 600 s command."""
    import re

    script = open(os.path.join(ROOT, "scripts", "gpu-check.sh")).read()
    assert 'timeout -s INT -k 15 "$limit"' in script
    limits = [int(n) for n in re.findall(r"^step (\d+) ", script, re.M)]
    assert len(limits) == 7 and sum(n * 9 // 25 for n in limits) <= 520


def test_a_truncated_step_file_is_named_and_the_other_sections_still_written(tmp_path):
    """A step killed while writing (SIGKILL 15 s after SIGINT) can leave half a JSON or junit file."""
    peaks = tmp_path / "peaks.json"
    peaks.write_text(json.dumps({"device": DEVICE, "peaks": PEAKS}))
    bench = tmp_path / "kernels.json"
    bench.write_text(json.dumps(BENCH))
    (tmp_path / "e2e.json").write_text('[{"model": "fisa-vit-b16", "ima')
    (tmp_path / "kernels.xml").write_text(JUNIT[:80])
    args = ["write", "--peaks", str(peaks), "--bench", str(bench), "--e2e", str(tmp_path / "e2e.json"),
            "--tests", str(tmp_path / "kernels.xml"), "--failed", "kernel tests", "--out-dir", str(tmp_path / "out")]
    assert gpu_report.main(args) == 0
    (path,) = (tmp_path / "out").iterdir()
    text = path.read_text()
    assert "**Unreadable, so left out: kernels.xml (ParseError:" in text and "; e2e.json (JSONDecodeError:" in text
    assert "| adapter_attention | vitb16-640-coco fwd | triton |" in text
    assert "## End to end" not in text and "## Kernel tests" not in text
