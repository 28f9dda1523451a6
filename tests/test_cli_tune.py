"""`fisa-rt tune` and the kernel choices that `inspect` prints (CPU: SDPA and eager timed for inference)."""

import re

import pytest

from fisa_rt.cli import build_parser
from fisa_rt.kernels import dispatch
from fisa_rt.runtime.assets import default_checkpoint
from fisa_rt.runtime.inspect import describe

from helpers import one_line_error, run_cli as run


def test_tune_has_help_with_an_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--help"])
    help_text = capsys.readouterr().out
    assert "example:" in help_text and "fisa-rt tune --engine" in help_text and "--force" in help_text


def test_tune_on_cpu_measures_the_models_ops_and_inspect_prints_them(tmp_path, monkeypatch):
    result = run("tune", "--engine", default_checkpoint(), "--classes", "1203", cache=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    header, *rows = result.stdout.rstrip().splitlines()
    assert re.match(r"  kernel choices on cpu .+ \d+ threads \(ms per call, wall clock; ", header), header
    assert str(tmp_path) in header
    # the embedded model's SEVE adapters at K = 1203 (bucket 2048) and its mask-attention head; eager is always
    # timed, and what runs is the fastest that ran
    adapter = next(r for r in rows if "adapter_attention:float32:fwd:" in r and ",2048," in r)
    assert "eager" in adapter and "sdpa-flash" in adapter
    assert any("mask_attention:float32:fwd:" in r for r in rows)
    for row in rows:
        times = dict(re.findall(r"([\w-]+) ([\d.e-]+)(?: ms)?", row.split(": ", 1)[1].split("; failed")[0]))
        assert float(times[row.split(": ", 1)[1].split()[0]]) == min(float(t) for t in times.values()), row
    # a new process (inspect) reads the same file back
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(dispatch, "_TABLES", {})
    out = "\n".join(describe(default_checkpoint()))
    assert header in out and adapter.strip() in out


def test_inspect_says_when_nothing_is_measured_yet(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(dispatch, "_TABLES", {})
    out = "\n".join(describe(default_checkpoint()))
    assert re.search(r"kernel choices on cpu .+: none measured yet .+`fisa-rt tune --engine CKPT`", out), out


def test_tune_refuses_an_engine_that_chooses_no_kernels(tmp_path):
    onnx = tmp_path / "model.portable.onnx"
    onnx.write_bytes(b"not looked at")
    one_line_error(run("tune", "--engine", onnx, cache=tmp_path), "takes a FISA checkpoint (.safetensors)")
    # numpy's allocation error for the images was a traceback; bench refused the same batch in one line
    one_line_error(run("tune", "--engine", default_checkpoint(), "--batch", "1000000000", cache=tmp_path),
                   "needs at least", "GiB of memory")
