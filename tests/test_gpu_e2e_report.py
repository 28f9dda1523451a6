"""benchmarks/gpu_e2e_report.py (the table of benchmarks/test_gpu_e2e.py) on recorded rows: no GPU needed."""

import importlib.util
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")
spec = importlib.util.spec_from_file_location("gpu_e2e_report", os.path.join(ROOT, "benchmarks", "gpu_e2e_report.py"))
gpu_e2e_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_e2e_report)


def _row(run, model_ms, e2e_ms, agreement=1.0, batch=1, notes=()):
    return {"model": "fisa-vit-b16", "input": "640x480 -> 640x640", "batch": batch, "run": run, "model_ms": model_ms,
            "e2e_ms": e2e_ms, "peak_gib": 1.5, "agreement": agreement, "notes": list(notes)}


def test_rows_are_ordered_and_compared_with_eager_fp32_of_their_batch():
    rows = [_row("fisa-rt default", 4.0, 5.0, 0.999, notes=["fisa-vit-b16 fisa-rt --compile: graphs fell back"]),
            _row("eager fp32", 14.0, 20.0), _row("eager fp32", 60.0, 80.0, batch=8),
            _row("eager fp16", 10.0, 16.0, batch=8)]
    lines = gpu_e2e_report.render(rows).splitlines()
    assert [line.split(" | ")[3] for line in lines[2:6]] == ["eager fp32", "fisa-rt default", "eager fp32",
                                                             "eager fp16"]
    assert lines[3] == ("| fisa-vit-b16 | 640x480 -> 640x640 | 1 | fisa-rt default | 4.00 | 5.00 | 200 | 1.50 "
                        "| 3.50x | 4.00x | 99.90 % |")
    assert "| 8 | eager fp16 | 10.00 | 16.00 | 500 | 1.50 | 6.00x | 5.00x | 100.00 % |" in lines[5]
    assert lines[-1] == "- fisa-vit-b16 fisa-rt --compile: graphs fell back"


def test_agreement_below_the_bound_and_missing_baselines_are_named():
    rows = [_row("eager fp32", 14.0, 20.0), _row("eager fp16", 10.0, 16.0, agreement=0.99),
            _row("fisa-rt default", 4.0, 5.0, agreement=0.995), _row("eager fp16", 1.0, 1.0, batch=8)]
    assert gpu_e2e_report.disagreements(rows) == [
        "fisa-vit-b16 batch 1 eager fp16: labels agree on 99.00 % of pixels with eager fp32 (at least 99.5 % asked)",
        "fisa-vit-b16 batch 8: no eager fp32 row to compare eager fp16 with",
    ]
    assert "| - | - |" in gpu_e2e_report.render(rows)


def test_the_gpu_benchmark_body_runs_on_cpu_through_the_replay_seam(tmp_path, monkeypatch):
    """benchmarks/test_gpu_e2e.py runs only on a rare GPU lease; here its body runs with the CPU for the GPU and
    CUDA graphs through the tests' replay seam (fisa-tiny, batches 1 and 2, the quick runs), so a mistake in it
    shows before a lease is spent: the rows are written as they come, and the model row times the graph the
    end-to-end calls captured (one capture per batch, not two)."""
    import json

    import torch

    from test_cuda_graphs import ReplaySeam

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import test_gpu_e2e as bench

    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args, **kwargs: 0)
    seams = []

    def on_cpu(path, device, cuda_graphs=None, compile=False, autocast=None):
        seams.extend([ReplaySeam()] if cuda_graphs is None else [])
        return real(path, "cpu", cuda_graphs=False if cuda_graphs is False else None, compile=compile,
                    graph_seam=seams[-1] if cuda_graphs is None else None, autocast=autocast)

    real = bench.TorchBackend
    monkeypatch.setattr(bench, "TorchBackend", on_cpu)
    monkeypatch.setattr(bench, "RUNS", ("eager fp32", "eager fp16", "fisa-rt default"))
    monkeypatch.setattr(bench, "BATCHES", (1, 2))
    monkeypatch.setattr(bench, "ITERATIONS", 2)
    rows = bench.Rows(str(tmp_path))
    bench.test_end_to_end(rows, tmp_path, "fisa-tiny", (96, 128))
    assert [(r["batch"], r["run"]) for r in rows] == [(b, run) for run in bench.RUNS for b in (1, 2)]
    assert all(r["agreement"] >= 0.995 and not r["notes"] for r in rows)
    assert len(seams) == 1 and seams[0].captures == 2
    assert json.loads((tmp_path / "gpu-e2e.json").read_text()) == rows
    assert "| fisa-tiny | 128x96 -> 128x128 | 2 | fisa-rt default |" in (tmp_path / "gpu-e2e.md").read_text()
