"""GPU measurement for ``scripts/gpu-check.sh``: the card's own peaks, fisa-vit-b16 end to end, and the report.

    python benchmarks/gpu_report.py peaks --json peaks.json            # copy-kernel bandwidth, fp16 GEMM FLOP/s
    python benchmarks/gpu_report.py e2e --json e2e.json                 # fisa-vit-b16 at 640 px, eager vs Triton
    python benchmarks/gpu_report.py choices --json choices.json         # kernels 'auto': each candidate's time
    python benchmarks/gpu_report.py write --tests kernels.xml --bench kernels.json --peaks peaks.json \\
        --e2e e2e.json --out-dir benchmarks/results                     # benchmarks/results/<date>-<gpu>.md

Peaks are measured on the card (a PCIe H100 has 2.0 TB/s, an SXM one 3.35 TB/s: the name does not say
which), so roofline fractions in the report are against what this card can do. Every timing is the median
of CUDA-event-timed runs of many back-to-back calls (``triton.testing.do_bench``), never one synchronised call.
Everything that needs a GPU raises ``GpuUnavailableError`` with one line saying so; the report writer
runs anywhere (tests/test_gpu_report.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence


class GpuUnavailableError(RuntimeError):
    """A measurement that needs a CUDA GPU was asked for where none is visible."""


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise GpuUnavailableError("gpu-check needs a CUDA GPU: torch.cuda.is_available() is False on this machine")


def time_ms(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 200) -> float:
    """Median milliseconds per call of ``fn`` (CUDA events around back-to-back calls, L2 flushed between)."""
    require_cuda()
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def bandwidth(bytes_copied: int, ms: float) -> float:
    """Bytes per second of a copy: every byte is read once and written once."""
    return 2.0 * bytes_copied / (ms * 1e-3)


def gemm_flops(n: int, ms: float) -> float:
    return 2.0 * n ** 3 / (ms * 1e-3)


def measure_peaks(copy_bytes: int = 1 << 30, gemm_n: int = 8192) -> Dict[str, float]:
    """This card's DRAM bandwidth (a 1 GiB device-to-device copy) and dense fp16 tensor FLOP/s (an n^3 GEMM)."""
    require_cuda()
    import torch

    src = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src))
    a = torch.randn(gemm_n, gemm_n, device="cuda", dtype=torch.float16)
    b = torch.randn_like(a)
    gemm_ms = time_ms(lambda: a @ b)
    return {"dram_bytes_per_s": bandwidth(copy_bytes, copy_ms), "tensor_flops_per_s": gemm_flops(gemm_n, gemm_ms),
            "copy_bytes": copy_bytes, "gemm_n": gemm_n}


def device_info() -> Dict[str, object]:
    """Name, capability, SMs, memory, driver and library versions of GPU 0."""
    require_cuda()
    import torch

    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = "unknown (nvidia-smi unavailable)"
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2 ** 30, 1), "driver": driver, "cuda": torch.version.cuda,
            "versions": versions()}


def versions() -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("torch", "triton", "open_clip", "onnxruntime", "tensorrt"):
        try:
            found[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            found[name] = None
    return found


def _backend_forwards(model_name: str, image: int, classes: int):
    """(backend, batch-1 fp16 forward) for the PyTorch eager references, then the Triton path, of one model."""
    import torch

    from fisa_rt import create_model

    torch.manual_seed(0)
    model = create_model(model_name).cuda().half().eval()
    images = torch.randn(1, 3, image, image, device="cuda", dtype=torch.float16)
    text = torch.nn.functional.normalize(torch.randn(classes, model.embed_dim, device="cuda"), dim=-1).half()
    for backend in ("reference", "triton"):
        model.set_kernels(backend)
        yield backend, lambda: model(images, text)


def end_to_end(model_name: str = "fisa-vit-b16", image: int = 640, classes: int = 133) -> List[Dict[str, object]]:
    """fisa-vit-b16 forward at ``image`` px, fp16, batch 1: PyTorch eager (references) against the Triton path."""
    require_cuda()
    import torch

    rows = []
    for backend, forward in _backend_forwards(model_name, image, classes):
        with torch.inference_mode():
            ms = time_ms(forward, warmup_ms=200, rep_ms=2000)
        rows.append({"model": model_name, "image": image, "classes": classes, "backend": backend, "ms": ms})
    return rows


def measure_choices(model_name: str = "fisa-vit-b16", image: int = 640, classes: int = 133,
                    batches=(1, 8)) -> List[Dict[str, object]]:
    """What kernels 'auto' chooses for ``model_name`` (fp16 forward), measured afresh (a table in memory: the
    user's cache is neither read nor written), with every candidate's ms per call under CUDA graphs."""
    require_cuda()
    import torch

    from fisa_rt import create_model
    from fisa_rt.kernels import dispatch
    from fisa_rt.kernels.choice import ChoiceTable

    table = ChoiceTable(dispatch.device_name(torch.cuda.current_device()))
    dispatch.install_table(table)
    torch.manual_seed(0)
    model = create_model(model_name).cuda().half().eval()
    model.set_kernels("auto")
    text = torch.nn.functional.normalize(torch.randn(classes, model.embed_dim, device="cuda"), dim=-1).half()
    with torch.no_grad():
        for batch in batches:
            model(torch.randn(batch, 3, image, image, device="cuda", dtype=torch.float16), text)
    return [{"model": model_name, "image": image, "classes": classes, "key": key, "implementation": c.implementation,
             "times_ms": c.times_ms, "failed": c.failed} for key, c in sorted(table.choices.items())]


def render_choices(rows: List[Dict[str, object]]) -> List[str]:
    """The per-op choice table: each candidate's time under graphs, the chosen one first and in bold."""
    lines = ["## Kernel choices of `auto` (ms per call, CUDA-graph replay; `gpu_report.py choices`)", "",
             "| model | op, dtype, pass, shape bucket | chosen | candidates (ms) | failed |", "|---|---|---|---|---|"]
    for r in rows:
        times = sorted(r["times_ms"].items(), key=lambda kv: kv[1])
        shown = ", ".join(f"**{n} {t:.4f}**" if n == r["implementation"] else f"{n} {t:.4f}" for n, t in times)
        lines.append(f"| {r['model']} {r['image']} px, {r['classes']} classes | `{r['key']}` | {r['implementation']} "
                     f"| {shown} | {', '.join(sorted(r['failed'])) or '-'} |")
    lines.append("")
    return lines


def _graph_replay_ms(fn: Callable[[], object]) -> float:
    """Milliseconds per replay of ``fn`` captured in a CUDA graph: the GPU time without Python's launches."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks, so kernels are compiled
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, warmup_ms=100, rep_ms=1000)


def profile(model_name: str = "fisa-vit-b16", image: int = 640, classes: int = 133, top: int = 10,
            calls: int = 10) -> List[Dict[str, object]]:
    """Where one batch-1 forward's time goes, per backend: wall time, summed kernel time (torch.profiler;
    wall minus kernels is launch overhead), the heaviest kernels, and the wall time of a CUDA-graph replay,
    which removes Python's launches as a TensorRT engine does."""
    require_cuda()
    import torch
    from torch.profiler import ProfilerActivity

    rows = []
    for backend, forward in _backend_forwards(model_name, image, classes):
        with torch.inference_mode():
            wall = time_ms(forward, warmup_ms=200, rep_ms=1000)
            with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    forward()
                torch.cuda.synchronize()
            kernels = [(e.key, getattr(e, "self_device_time_total", 0.0) / 1e3 / calls, e.count // calls)
                       for e in prof.key_averages() if getattr(e, "self_device_time_total", 0.0) > 0]
            try:
                graph, graph_error = _graph_replay_ms(forward), None
            except Exception as error:  # capture refuses host syncs; the report says which one
                graph, graph_error = None, f"{type(error).__name__}: {error}".splitlines()[0][:160]
        kernels.sort(key=lambda k: -k[1])
        rows.append({"model": model_name, "image": image, "classes": classes, "backend": backend, "wall_ms": wall,
                     "kernel_ms": sum(k[1] for k in kernels), "launches": sum(k[2] for k in kernels),
                     "graph_ms": graph, "graph_error": graph_error,
                     "top": [{"kernel": name[:70], "ms": ms, "calls": n} for name, ms, n in kernels[:top]]})
    return rows


# ---- the report -----------------------------------------------------------------------------------------

def summarise_tests(junit_xml: str) -> Dict[str, int]:
    """Counts of a pytest --junitxml file."""
    root = ET.parse(junit_xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def kernel_rows(bench_json: Dict[str, object]) -> List[Dict[str, object]]:
    """One row per benchmark of benchmarks/test_kernels.py: op, case, implementation and its figures."""
    rows = []
    for bench in bench_json.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        if "ms" not in extra:
            continue
        match = re.match(r"test_(\w+?)\[(.*)\]$", bench["name"])
        op, params = (match.group(1), match.group(2)) if match else (bench["name"], "")
        rows.append({"op": op, "case": params, **extra})
    return rows


def _speedups(rows: List[Dict[str, object]]) -> Dict[tuple, Dict[str, float]]:
    by_case: Dict[tuple, Dict[str, float]] = {}
    for r in rows:
        by_case.setdefault((r["op"], r.get("shape", r["case"])), {})[str(r.get("impl"))] = float(r["ms"])
    return by_case


def render(
    info: Dict[str, object],
    peaks: Dict[str, float],
    tests: Optional[Dict[str, int]],
    kernels: List[Dict[str, object]],
    e2e: List[Dict[str, object]],
    date: str,
    minutes: Optional[float] = None,
    without_compiled: bool = False,
    profiles: Optional[List[Dict[str, object]]] = None,
    choices: Optional[List[Dict[str, object]]] = None,
    failed: Sequence[str] = (),
    unreadable: Sequence[str] = (),
) -> str:
    """``peaks`` None: that step failed (the DRAM fractions are then left out); ``failed``: the steps that failed
    or ran out of time, whose sections are missing or partial; ``unreadable``: step files left out, and why."""
    versions_line = ", ".join(f"{k} {v}" for k, v in dict(info.get("versions") or {}).items() if v)
    measured = (f"DRAM {peaks['dram_bytes_per_s'] / 1e12:.2f} TB/s (copy of {peaks['copy_bytes'] / 2 ** 30:.0f} GiB), "
                f"fp16 tensor {peaks['tensor_flops_per_s'] / 1e12:.0f} TFLOP/s ({peaks['gemm_n']}³ GEMM)"
                if peaks else "not measured")
    lines = [
        f"# fisa-rt GPU check — {info['name']} ({date})",
        "",
        f"- device: {info['name']}, compute capability {info['capability']}, {info['sms']} SMs, "
        f"{info['memory_gib']} GiB",
        f"- driver {info['driver']}, CUDA {info['cuda']}; {versions_line}",
        f"- peaks measured on this card: {measured}",
        "- command: `scripts/gpu-check.sh`" + (f" ({minutes:.1f} min)" if minutes is not None else ""),
        "",
    ]
    if failed:
        lines += [f"**Failed or out of time, so missing or partial below: {', '.join(failed)}.**", ""]
    if unreadable:
        lines += [f"**Unreadable, so left out: {'; '.join(unreadable)}.**", ""]
    if tests is not None:
        lines += ["## Kernel tests (`pytest tests/kernels`, bf16 included)", "",
                  f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                  f"{tests['skipped']} skipped", ""]
    if kernels:
        lines += ["## Kernel micro-benchmarks (median of do_bench, ms)", ""]
        if without_compiled:
            lines += ["torch.compile baselines left out (`FISA_GPU_CHECK_MINUTES` under 25: their compiles alone "
                      "take minutes).", ""]
        lines += ["| op | case | impl | ms | TFLOP/s | GB/s | of DRAM peak | vs eager |",
                  "|---|---|---|---|---|---|---|---|"]
        cases = _speedups(kernels)
        for r in kernels:
            ms, gbps = float(r["ms"]), r.get("gbps")
            eager = cases[(r["op"], r.get("shape", r["case"]))].get("eager")
            fraction = f"{gbps * 1e9 / peaks['dram_bytes_per_s']:.0%}" if gbps and peaks else ""
            speedup = f"{eager / ms:.2f}x" if eager else ""
            lines.append(f"| {r['op']} | {r.get('shape', r['case'])} | {r.get('impl', '')} | {ms:.4f} | "
                         f"{r.get('tflops', 0):.1f} | {gbps or 0:.0f} | {fraction} | {speedup} |")
        lines.append("")
    if e2e:
        reference = next((r["ms"] for r in e2e if r["backend"] == "reference"), None)
        lines += ["## End to end (fp16, batch 1)", "", "| model | image | classes | backend | ms | vs eager |",
                  "|---|---|---|---|---|---|"]
        for r in e2e:
            ratio = f"{reference / r['ms']:.2f}x" if reference else ""
            lines.append(f"| {r['model']} | {r['image']} | {r['classes']} | {r['backend']} | {r['ms']:.2f} | {ratio} |")
        lines.append("")
    if profiles:
        lines += render_profiles(profiles)
    if choices:
        lines += render_choices(choices)
    return "\n".join(lines)


def render_profiles(profiles: List[Dict[str, object]]) -> List[str]:
    """The profile section: launch overhead is wall minus kernel time; a graph replay removes it."""
    lines = ["## Where the time goes (batch 1, torch.profiler; graph = CUDA-graph replay)", "",
             "| backend | wall ms | kernel ms | launches | graph ms |", "|---|---|---|---|---|"]
    for p in profiles:
        graph = f"{p['graph_ms']:.2f}" if p.get("graph_ms") is not None else f"not capturable: {p['graph_error']}"
        lines.append(f"| {p['backend']} | {p['wall_ms']:.2f} | {p['kernel_ms']:.2f} | {p['launches']} | {graph} |")
    for p in profiles:
        lines += ["", f"Heaviest kernels, {p['backend']} ({p['model']}, {p['image']} px, {p['classes']} classes):", "",
                  "| kernel | ms per forward | calls |", "|---|---|---|"]
        lines += [f"| `{k['kernel']}` | {k['ms']:.3f} | {k['calls']} |" for k in p["top"]]
    lines.append("")
    return lines


def report_path(out_dir: str, gpu_name: str, date: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")[:40]
    return os.path.join(out_dir, f"{date}-{slug}.md")


def _json_file(path: str):
    with open(path) as f:
        return json.load(f)


class Inputs:
    """The step files ``write`` reads. A file a killed step left half-written counts as missing, and is named
    in the report, so one truncated file cannot cost the sections that were measured."""

    def __init__(self):
        self.unreadable: List[str] = []

    def json(self, path: Optional[str]):
        return self._read(path, lambda: _json_file(path))

    def tests(self, path: Optional[str]) -> Optional[Dict[str, int]]:
        return self._read(path, lambda: summarise_tests(path))

    def _read(self, path: Optional[str], read: Callable[[], object]):
        if not path or not os.path.exists(path):
            return None
        try:
            return read()
        except (ValueError, ET.ParseError, OSError) as error:  # JSONDecodeError is a ValueError
            self.unreadable.append(f"{os.path.basename(path)} ({type(error).__name__}: {error})".splitlines()[0])
            return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GPU peaks, end-to-end timing and the GPU-check report.")
    sub = parser.add_subparsers(dest="command", required=True)
    peaks = sub.add_parser("peaks", help="measure this card's DRAM bandwidth and fp16 tensor FLOP/s")
    peaks.add_argument("--json", required=True)
    e2e = sub.add_parser("e2e", help="fisa-vit-b16 at 640 px: eager against the Triton path")
    e2e.add_argument("--json", required=True)
    prof = sub.add_parser("profile", help="fisa-vit-b16: kernel time, launch overhead, CUDA-graph replay")
    prof.add_argument("--json", required=True)
    choices = sub.add_parser("choices", help="fisa-vit-b16: what kernels 'auto' picks, each candidate timed")
    choices.add_argument("--json", required=True)
    write = sub.add_parser("write", help="write benchmarks/results/<date>-<gpu>.md")
    write.add_argument("--tests", help="pytest --junitxml of the kernel tests")
    write.add_argument("--bench", help="pytest-benchmark JSON of benchmarks/test_kernels.py")
    write.add_argument("--peaks", required=True, help="JSON of `gpu_report.py peaks` (missing: not measured)")
    write.add_argument("--e2e")
    write.add_argument("--profile", help="JSON of `gpu_report.py profile`")
    write.add_argument("--choices", help="JSON of `gpu_report.py choices`")
    write.add_argument("--runtime", help="gpu-e2e.md of benchmarks/test_gpu_e2e.py (appended as it is)")
    write.add_argument("--minutes", type=float)
    write.add_argument("--without-compiled", action="store_true", help="the torch.compile baselines were skipped")
    write.add_argument("--failed", action="append", metavar="STEP", help="a step that failed or ran out of time")
    write.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    try:
        if args.command == "peaks":
            result = {"device": device_info(), "peaks": measure_peaks()}
        elif args.command == "e2e":
            result = end_to_end()
        elif args.command == "profile":
            result = profile()
        elif args.command == "choices":
            result = measure_choices()
        else:
            # without the peaks step's file (it failed), the device is read here: the other sections still count
            inputs = Inputs()
            measured = inputs.json(args.peaks) or {"device": device_info(), "peaks": None}
            date = datetime.date.today().isoformat()
            bench = inputs.json(args.bench)
            text = render(measured["device"], measured["peaks"], inputs.tests(args.tests),
                          kernel_rows(bench) if bench else [], inputs.json(args.e2e) or [], date, args.minutes,
                          args.without_compiled, inputs.json(args.profile), inputs.json(args.choices),
                          args.failed or (), inputs.unreadable)
            if args.runtime and os.path.exists(args.runtime):
                with open(args.runtime) as f:
                    text += "\n## Runtime end to end (benchmarks/test_gpu_e2e.py)\n\n" + f.read()
            path = report_path(args.out_dir, measured["device"]["name"], date)
            if os.path.exists(path):
                raise FileExistsError(f"{path} exists; move it away to write a new report")
            os.makedirs(args.out_dir, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}")
            return 0
    except (GpuUnavailableError, FileExistsError) as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        return 2
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
