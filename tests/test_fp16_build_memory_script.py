"""scripts/fp16-build-memory.py, whose figures docs/design.md quotes ("AutoCast's memory"), still runs against the
package's API: a random-weight checkpoint, the fp16 build, then AutoCast alone, each measured in its own process."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "fp16-build-memory.py")

pytest.importorskip("modelopt", reason="ModelOpt is in the test extra: pip install -e '.[test]'")


def test_fp16_build_memory_reports_the_build_and_autocast_alone(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path), "--configs", "fisa-tiny"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    build, alone = result.stdout.strip().splitlines()
    assert re.fullmatch(r"fisa-tiny \(128 px\): fp16 build [\d.]+ min, peak [\d.]+ GB", build), build
    found = re.fullmatch(r"fisa-tiny \(128 px\): AutoCast alone [\d.]+ min, peak ([\d.]+) GB, reference run "
                         r"'reduced in the graph, one run a batch', (\d+) of (\d+) nodes fp32", alone)
    assert found, alone
    assert float(found[1]) > 0.1 and 0 < int(found[2]) < int(found[3]) / 2
    assert os.path.isfile(tmp_path / "fisa-tiny" / "build" / "fisa-tiny.portable.fp16.onnx")
