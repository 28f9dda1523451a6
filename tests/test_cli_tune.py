"""`fisa-rt tune` and the kernel choices that `inspect` prints (CPU: no GPU to measure on)."""

import pytest

from fisa_rt.cli import build_parser
from fisa_rt.runtime.assets import default_checkpoint
from fisa_rt.runtime.inspect import describe

from helpers import one_line_error, run_cli as run


def test_tune_has_help_with_an_example_and_refuses_a_machine_without_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--help"])
    help_text = capsys.readouterr().out
    assert "example:" in help_text and "fisa-rt tune --engine" in help_text and "--force" in help_text
    one_line_error(run("tune", "--engine", default_checkpoint(), cache=tmp_path), "CUDA GPU")


def test_inspect_says_what_auto_runs_here():
    out = "\n".join(describe(default_checkpoint()))
    assert "kernel choices: none (no CUDA GPU: kernels 'auto' runs the PyTorch references)" in out
