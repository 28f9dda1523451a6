"""benchmarks/report.py: pytest-benchmark JSON -> the markdown report under benchmarks/results/."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_report", os.path.join(ROOT, "benchmarks", "report.py"))
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _bench(name, median, extra=None):
    return {"name": name, "stats": {"median": median, "min": median / 2, "rounds": 3}, "extra_info": extra or {}}


DATA = {
    "machine_info": {"fisa_rt": {"device": "CPU (x86_64, 2 threads)", "date": "2026-12-06",
                                 "versions": {"torch": "2.14.1", "tensorrt": None}}},
    "benchmarks": [
        _bench("test_stage[onnxruntime-model]", 0.0125, {"backend": "onnxruntime", "classes": 133}),
        _bench("test_stage[torch-model]", 0.02, {"backend": "torch", "cosine": 0.99951, "ratio": 1.234}),
        _bench("test_serving_load", 2.5),
    ],
    "skipped": [{"test": "benchmarks/test_kernels.py::test_a[x]", "reason": "needs a CUDA GPU"},
                {"test": "benchmarks/test_kernels.py::test_b[y]", "reason": "needs a CUDA GPU"},
                {"test": "benchmarks/test_backends.py::test_trt", "reason": "TensorRT is not installed"}],
}


def _tables(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def test_every_table_row_has_the_header_s_cells_and_every_recorded_key_a_column():
    text = report.render(DATA)
    assert "| test_stage |" not in text and "## test_stage" in text and "## test_serving_load" in text
    assert "| case | median ms | min ms | rounds | backend | classes | cosine | ratio |" in text
    assert "| onnxruntime-model | 12.50 | 6.25 | 3 | onnxruntime | 133 |  |  |" in text
    assert "| torch-model | 20.00 | 10.00 | 3 | torch |  | 1 | 1.23 |" in text
    assert "| case | median ms | min ms | rounds |\n|---|---|---|---|\n| - | 2500.00 | 1250.00 | 3 |" in text
    for section in text.split("## test_")[1:]:
        rows = _tables(section)
        assert rows and len({row.count("|") for row in rows}) == 1, section
    assert "- versions: torch 2.14.1\n" in text  # a missing package is left out, not printed as None


def test_skipped_cases_are_counted_per_reason_in_singular_or_plural():
    text = report.render(DATA)
    assert "- needs a CUDA GPU: 2 cases (test_a[x], test_b[y])" in text
    assert "- TensorRT is not installed: 1 case (test_trt)" in text


def test_main_refuses_to_replace_a_report_and_names_an_unreadable_json(tmp_path, capsys):
    data = tmp_path / "bench.json"
    data.write_text(json.dumps(DATA))
    out = tmp_path / "results" / "report.md"
    assert report.main([str(data), "--out", str(out)]) == 0
    first = out.read_text()
    assert first.startswith("# fisa-rt benchmarks — CPU (x86_64, 2 threads)")
    capsys.readouterr()
    assert report.main([str(data), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == first
    broken = tmp_path / "broken.json"
    broken.write_text('{"benchmarks": [')
    assert report.main([str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.json" in err and "pytest-benchmark JSON" in err
    assert report.main([str(data), "--append", str(out)]) == 0
    assert out.read_text().startswith(first) and "# Added run" in out.read_text()


def test_main_writes_a_report_named_without_a_folder(tmp_path, monkeypatch):
    """``--out report.md`` failed on os.makedirs("")."""
    data = tmp_path / "bench.json"
    data.write_text(json.dumps(DATA))
    monkeypatch.chdir(tmp_path)
    assert report.main([str(data), "--out", "report.md"]) == 0
    assert (tmp_path / "report.md").read_text().startswith("# fisa-rt benchmarks")
