"""Helpers shared by test modules (fixtures live in conftest.py)."""

import os
import pathlib
import subprocess
import sys

import torch
import torch.nn.functional as F

EXE = pathlib.Path(sys.executable).parent / "fisa-rt"


def run_cli(*args, cache=None):
    """The real `fisa-rt` console script; ``cache`` is its XDG_CACHE_HOME (the embeddings cache)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)} if cache else None
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def run_infer(engine, source, out, *flags, classes=None, task=None, cache=None):
    """`fisa-rt infer --engine ENGINE --input SOURCE --out OUT` (with --classes and --task where given) and
    ``flags`` as written."""
    args = ["infer", "--engine", engine, "--input", source, "--out", out]
    for flag, value in (("--classes", classes), ("--task", task)):
        args += [flag, value] if value is not None else []
    return run_cli(*args, *flags, cache=cache)


def one_line_error(result, *phrases):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("fisa-rt: error:") and "Traceback" not in result.stderr
    ), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def random_text(k: int, dim: int) -> torch.Tensor:
    return F.normalize(torch.randn(k, dim), dim=-1)


def open_gates(model, value: float = 1.0) -> None:
    """Give SEVE adapters a non-zero gate, so tests see their effect."""
    with torch.no_grad():
        for adapter in model.backbone.seve.values():
            adapter.gate.fill_(value)
