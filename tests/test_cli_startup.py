"""`fisa-rt --help`, `fisa-rt models` and a usage error answer without loading the heavy libraries: what
users of trtexec, yolo or git expect (docs/design.md, "Layout"). Each runs in a fresh interpreter, which
then reports what it imported."""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "open_clip")
COMMANDS = {"help": ["--help"], "models": ["models"], "usage error": ["infer", "--no-such-flag"]}
PROBE = """
import json, sys
from fisa_rt.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
with open(sys.argv[2], "w") as f:
    json.dump({"code": code, "loaded": sorted(m for m in json.loads(sys.argv[3]) if m in sys.modules)}, f)
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Command -> {"code": exit code, "loaded": the HEAVY modules it imported}, one fresh interpreter each."""
    found = {}
    for command, args in COMMANDS.items():
        report = tmp_path_factory.mktemp("startup") / "report.json"
        result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), str(report), json.dumps(HEAVY)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and report.is_file(), result.stderr
        found[command] = json.loads(report.read_text())
    return found


def test_answers_without_onnxruntime_or_open_clip(reports):
    assert {command: report["code"] for command, report in reports.items()} == {
        "help": 0, "models": 0, "usage error": 2
    }
    assert {command: set(report["loaded"]) & {"onnxruntime", "open_clip"} for command, report in reports.items()} == {
        command: set() for command in COMMANDS
    }


def test_answers_without_torch(reports):
    assert [command for command, report in reports.items() if "torch" in report["loaded"]] == []


def test_onnx_runtime_inference_and_inspect_leave_torch_compiler_and_the_kernels_unloaded(artefacts, tmp_path):
    # importing them (the package's names used to) cost 1.3 s of a 4.5 s run of README's main command on 2 cores
    compiler = ["torch._dynamo", "fisa_rt.kernels.dispatch", "fisa_rt.kernels.adapter_attention"]
    runs = {"infer": ["infer", "--engine", artefacts["ort"], "--vocab", "synthetic", "--out", str(tmp_path / "out"),
                      "--no-progress"],
            "inspect": ["inspect", artefacts["fused"]]}
    for command, args in runs.items():
        report = tmp_path / f"{command}.json"
        result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), str(report), json.dumps(compiler)],
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
        assert result.returncode == 0 and json.loads(report.read_text()) == {"code": 0, "loaded": []}, result.stderr
    assert (tmp_path / "out").is_dir()
