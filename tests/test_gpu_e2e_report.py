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
